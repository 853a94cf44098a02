//! Brands, products, stock levels and likes.

use commerce_platform::db::{ScopedFutureExt, is_unique_violation, last_insert_id};
use commerce_platform::{ServiceError, UserId, time};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::ProductStore;
use super::catalogue_cache::{CacheKey, CachedPage, CachedProduct, Lookup};
use super::models::{
    BrandChangeset, BrandRow, ProductChangeset, ProductViewRow, StockRow, product_from_view,
    product_view, product_view_columns,
};
use super::schema::{brands, product_likes, product_stock, products};
use crate::domain::{
    Brand, BrandChanges, LikeOutcome, NewBrand, NewProduct, Product, ProductChanges, ProductPage,
    ProductQuery, ProductSort, Stock, StockUnits, like_count_after,
};

impl ProductStore {
    pub async fn brand_create(&self, brand: &NewBrand) -> Result<Brand, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    let now = time::now();
                    diesel::insert_into(brands::table)
                        .values((
                            brands::name.eq(brand.name.clone().into_inner()),
                            brands::description.eq(brand.description.clone().into_inner()),
                            brands::created_at.eq(now),
                            brands::updated_at.eq(now),
                        ))
                        .execute(c)
                        .await?;
                    let id = last_insert_id(c).await?;
                    brand_load(c, id).await
                }
                .scope_boxed()
            })
            .await
    }

    pub async fn brand_update(
        &self,
        brand_id: i64,
        changes: &BrandChanges,
    ) -> Result<Brand, ServiceError> {
        let brand = self.brand_write(brand_id, changes).await?;
        // Products show their brand's name: drop the brand's cached products.
        let products: Vec<i64> = self
            .db
            .read(|c| {
                async move {
                    Ok(products::table
                        .filter(products::brand_id.eq(brand_id))
                        .select(products::id)
                        .load(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&products).await;
        Ok(brand)
    }

    async fn brand_write(
        &self,
        brand_id: i64,
        changes: &BrandChanges,
    ) -> Result<Brand, ServiceError> {
        self.db
            .transaction(|c| {
                async move {
                    if !changes.is_empty() {
                        // diesel-async counts matched rows: 0 means no such brand.
                        let matched = diesel::update(brands::table.find(brand_id))
                            .set(BrandChangeset {
                                name: changes.name.clone().map(|n| n.into_inner()),
                                description: changes.description.clone().map(|d| d.into_inner()),
                                updated_at: time::now(),
                            })
                            .execute(c)
                            .await?;
                        if matched == 0 {
                            return Err(ServiceError::not_found("brand", brand_id));
                        }
                    }
                    brand_load(c, brand_id).await
                }
                .scope_boxed()
            })
            .await
    }

    pub async fn brand_get(&self, brand_id: i64) -> Result<Brand, ServiceError> {
        self.db
            .read(|c| async move { brand_load(c, brand_id).await }.scope_boxed())
            .await
    }

    pub async fn product_create(&self, product: &NewProduct) -> Result<Product, ServiceError> {
        let written = self
            .db
            .transaction(|c| {
                async move {
                    let brand = brands::table
                        .find(product.brand_id)
                        .select(brands::id)
                        .first::<i64>(c)
                        .await
                        .optional()?;
                    if brand.is_none() {
                        return Err(ServiceError::not_found("brand", product.brand_id));
                    }
                    let now = time::now();
                    diesel::insert_into(products::table)
                        .values((
                            products::brand_id.eq(product.brand_id),
                            products::name.eq(product.name.clone().into_inner()),
                            products::price.eq(product.price.get()),
                            products::status.eq(product.status.as_str()),
                            products::like_count.eq(0),
                            products::created_at.eq(now),
                            products::updated_at.eq(now),
                        ))
                        .execute(c)
                        .await?;
                    let id = last_insert_id(c).await?;
                    diesel::insert_into(product_stock::table)
                        .values((
                            product_stock::product_id.eq(id),
                            product_stock::available.eq(product.stock.get()),
                            product_stock::reserved.eq(0),
                            product_stock::sold.eq(0),
                            product_stock::updated_at.eq(now),
                        ))
                        .execute(c)
                        .await?;
                    product_load(c, id).await
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&[written.id]).await;
        Ok(written)
    }

    pub async fn product_update(
        &self,
        product_id: i64,
        changes: &ProductChanges,
    ) -> Result<Product, ServiceError> {
        let written = self
            .db
            .transaction(|c| {
                async move {
                    if !changes.is_empty() {
                        let matched = diesel::update(products::table.find(product_id))
                            .set(ProductChangeset {
                                name: changes.name.clone().map(|n| n.into_inner()),
                                price: changes.price.map(|p| p.get()),
                                status: changes.status.map(|s| s.as_str()),
                                updated_at: time::now(),
                            })
                            .execute(c)
                            .await?;
                        if matched == 0 {
                            return Err(ServiceError::not_found("product", product_id));
                        }
                    }
                    product_load(c, product_id).await
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&[product_id]).await;
        Ok(written)
    }

    /// A product, read through the catalogue cache (its stock always from
    /// MySQL). Not for the saga path, which reads and locks MySQL itself.
    pub async fn product_get(&self, product_id: i64) -> Result<Product, ServiceError> {
        let key = CacheKey::product(product_id);
        let version = match self.catalogue_cache.lookup::<CachedProduct>(&key).await {
            Lookup::Hit(cached) => {
                if let Some(product) = self.with_fresh_stock(vec![cached]).await?.pop() {
                    return Ok(product);
                }
                None
            }
            Lookup::Miss { version } => Some(version),
            Lookup::Off => None,
        };
        let product = self.product_read(product_id).await?;
        if let Some(version) = version {
            self.catalogue_cache
                .fill(&key, &version, &CachedProduct::from(&product))
                .await;
        }
        Ok(product)
    }

    async fn product_read(&self, product_id: i64) -> Result<Product, ServiceError> {
        self.db
            .read(|c| async move { product_load(c, product_id).await }.scope_boxed())
            .await
    }

    /// One page of products and the count over all pages, read through the
    /// catalogue cache (stock always from MySQL).
    pub async fn products_list(&self, query: &ProductQuery) -> Result<ProductPage, ServiceError> {
        let key = CacheKey::list(query);
        let version = match self.catalogue_cache.lookup::<CachedPage>(&key).await {
            Lookup::Hit(cached) => {
                let wanted = cached.products.len();
                let products = self.with_fresh_stock(cached.products).await?;
                if products.len() == wanted {
                    return Ok(ProductPage {
                        products,
                        total: cached.total,
                    });
                }
                None
            }
            Lookup::Miss { version } => Some(version),
            Lookup::Off => None,
        };
        let page = self.products_read(query).await?;
        if let Some(version) = version {
            let cached = CachedPage {
                products: page.products.iter().map(CachedProduct::from).collect(),
                total: page.total,
            };
            self.catalogue_cache.fill(&key, &version, &cached).await;
        }
        Ok(page)
    }

    /// Cached products with their stock read now, in their order; a product
    /// whose stock or entry cannot be read is left out (the caller then
    /// reads MySQL).
    async fn with_fresh_stock(
        &self,
        cached: Vec<CachedProduct>,
    ) -> Result<Vec<Product>, ServiceError> {
        let ids: Vec<i64> = cached.iter().map(CachedProduct::id).collect();
        let ids = &ids;
        let rows: Vec<StockRow> = self
            .db
            .read(|c| {
                async move {
                    Ok(product_stock::table
                        .filter(product_stock::product_id.eq_any(ids))
                        .select(StockRow::as_select())
                        .load(c)
                        .await?)
                }
                .scope_boxed()
            })
            .await?;
        let mut stocks: std::collections::HashMap<i64, Stock> = rows
            .into_iter()
            .map(|row| (row.product_id, Stock::from(row)))
            .collect();
        Ok(cached
            .into_iter()
            .filter_map(|product| {
                let stock = stocks.remove(&product.id())?;
                product.with_stock(stock)
            })
            .collect())
    }

    async fn products_read(&self, query: &ProductQuery) -> Result<ProductPage, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let mut rows = product_view().select(product_view_columns()).into_boxed();
                    let mut count = products::table.count().into_boxed();
                    if let Some(brand_id) = query.brand_id {
                        rows = rows.filter(products::brand_id.eq(brand_id));
                        count = count.filter(products::brand_id.eq(brand_id));
                    }
                    // Each order has an index, with and without the brand filter.
                    rows = match query.sort {
                        ProductSort::Latest => {
                            rows.order_by((products::created_at.desc(), products::id.desc()))
                        }
                        ProductSort::PriceAsc => {
                            rows.order_by((products::price.asc(), products::id.asc()))
                        }
                        ProductSort::LikesDesc => {
                            rows.order_by((products::like_count.desc(), products::id.desc()))
                        }
                    };
                    let rows = rows
                        .limit(query.page.limit())
                        .offset(query.page.offset())
                        .load::<ProductViewRow>(c)
                        .await?;
                    let total = count.get_result::<i64>(c).await?;
                    Ok(ProductPage {
                        products: rows
                            .into_iter()
                            .map(product_from_view)
                            .collect::<Result<_, _>>()?,
                        total,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// Sets the available units; reserved and sold units are untouched.
    ///
    /// The one absolute write of a stock level: the administrator names the
    /// new `available` (validated by [`StockUnits`]), nothing is computed
    /// from a read. Only that column is written, the matched row is checked,
    /// and the answer is the row read back, not the one read before.
    pub async fn stock_set(
        &self,
        product_id: i64,
        available: StockUnits,
    ) -> Result<Stock, ServiceError> {
        let written = self
            .db
            .transaction(|c| {
                async move {
                    let stock: Stock = stock_row_lock(c, product_id)
                        .await?
                        .ok_or_else(|| ServiceError::not_found("product", product_id))?;
                    let stock = stock.with_available(available);
                    let matched = diesel::update(product_stock::table.find(product_id))
                        .set((
                            product_stock::available.eq(stock.available),
                            product_stock::updated_at.eq(time::now()),
                        ))
                        .execute(c)
                        .await?;
                    if matched != 1 {
                        return Err(ServiceError::internal(format!(
                            "stock update of product {product_id} matched {matched} rows"
                        )));
                    }
                    stock_row_lock(c, product_id).await?.ok_or_else(|| {
                        ServiceError::internal(format!(
                            "stock of product {product_id} vanished while setting it"
                        ))
                    })
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&[product_id]).await;
        Ok(written)
    }

    /// Records the user's like; a repeat changes nothing.
    pub async fn like_add(
        &self,
        user: &UserId,
        product_id: i64,
    ) -> Result<LikeOutcome, ServiceError> {
        let written = self
            .db
            .transaction(|c| {
                async move {
                    let count = like_count_lock(c, product_id).await?;
                    let inserted = diesel::insert_into(product_likes::table)
                        .values((
                            product_likes::user_id.eq(user.as_str()),
                            product_likes::product_id.eq(product_id),
                            product_likes::created_at.eq(time::now()),
                        ))
                        .execute(c)
                        .await;
                    let like_count = match inserted {
                        Ok(_) => {
                            like_count_store(c, product_id, like_count_after(count, 1)).await?
                        }
                        // Liked before: MySQL undid only the failed statement.
                        Err(e) if is_unique_violation(&e) => count,
                        Err(e) => return Err(e.into()),
                    };
                    Ok(LikeOutcome {
                        product_id,
                        liked: true,
                        like_count,
                    })
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&[product_id]).await;
        Ok(written)
    }

    /// Removes the user's like; unliking a product not liked changes nothing.
    pub async fn like_remove(
        &self,
        user: &UserId,
        product_id: i64,
    ) -> Result<LikeOutcome, ServiceError> {
        let written = self
            .db
            .transaction(|c| {
                async move {
                    let count = like_count_lock(c, product_id).await?;
                    let deleted =
                        diesel::delete(product_likes::table.find((user.as_str(), product_id)))
                            .execute(c)
                            .await?;
                    let like_count = if deleted > 0 {
                        like_count_store(c, product_id, like_count_after(count, -1)).await?
                    } else {
                        count
                    };
                    Ok(LikeOutcome {
                        product_id,
                        liked: false,
                        like_count,
                    })
                }
                .scope_boxed()
            })
            .await?;
        self.catalogue_cache.invalidate(&[product_id]).await;
        Ok(written)
    }
}

async fn brand_load(c: &mut AsyncMysqlConnection, brand_id: i64) -> Result<Brand, ServiceError> {
    brands::table
        .find(brand_id)
        .select(BrandRow::as_select())
        .first(c)
        .await
        .optional()?
        .map(Brand::from)
        .ok_or_else(|| ServiceError::not_found("brand", brand_id))
}

/// A product with its brand's name and its stock, or NOT_FOUND.
async fn product_load(
    c: &mut AsyncMysqlConnection,
    product_id: i64,
) -> Result<Product, ServiceError> {
    let row = product_view()
        .filter(products::id.eq(product_id))
        .select(product_view_columns())
        .first::<ProductViewRow>(c)
        .await
        .optional()?
        .ok_or_else(|| ServiceError::not_found("product", product_id))?;
    product_from_view(row)
}

/// The product's stock row, locked until the transaction ends; `None` for an
/// unknown product.
async fn stock_row_lock(
    c: &mut AsyncMysqlConnection,
    product_id: i64,
) -> Result<Option<Stock>, ServiceError> {
    Ok(product_stock::table
        .find(product_id)
        .select(StockRow::as_select())
        .for_update()
        .first::<StockRow>(c)
        .await
        .optional()?
        .map(Stock::from))
}

/// Locks the product row (serialising likes of one product) and reads its
/// like count; NOT_FOUND for an unknown product.
async fn like_count_lock(
    c: &mut AsyncMysqlConnection,
    product_id: i64,
) -> Result<i64, ServiceError> {
    products::table
        .find(product_id)
        .select(products::like_count)
        .for_update()
        .first::<i64>(c)
        .await
        .optional()?
        .ok_or_else(|| ServiceError::not_found("product", product_id))
}

async fn like_count_store(
    c: &mut AsyncMysqlConnection,
    product_id: i64,
    like_count: i64,
) -> Result<i64, ServiceError> {
    diesel::update(products::table.find(product_id))
        .set(products::like_count.eq(like_count))
        .execute(c)
        .await?;
    Ok(like_count)
}
