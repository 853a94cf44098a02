//! Brands, products, likes and the sales ranking. Reading the catalogue
//! needs no token; liking does (as the token's user).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use commerce_proto::product::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiPath, PageQuery, in_range, path_id, positive_id, time};
use crate::AppState;
use crate::auth::Shopper;
use crate::extract::ApiQuery;
use crate::mesh::Deadline;
use crate::problem::{Errors, Problem};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Brand {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<pb::Brand> for Brand {
    fn from(b: pb::Brand) -> Self {
        Self {
            id: b.id,
            name: b.name,
            description: b.description,
            created_at: time(b.created_at),
            updated_at: time(b.updated_at),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    OnSale,
    Suspended,
    Discontinued,
}

impl ProductStatus {
    pub fn from_proto(raw: i32) -> Option<Self> {
        match pb::ProductStatus::try_from(raw).ok()? {
            pb::ProductStatus::OnSale => Some(Self::OnSale),
            pb::ProductStatus::Suspended => Some(Self::Suspended),
            pb::ProductStatus::Discontinued => Some(Self::Discontinued),
            pb::ProductStatus::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> pb::ProductStatus {
        match self {
            Self::OnSale => pb::ProductStatus::OnSale,
            Self::Suspended => pb::ProductStatus::Suspended,
            Self::Discontinued => pb::ProductStatus::Discontinued,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stock {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    pub brand_id: i64,
    pub brand_name: String,
    pub name: String,
    /// KRW.
    pub price: i64,
    pub status: Option<ProductStatus>,
    pub like_count: i64,
    pub stock: Option<Stock>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<pb::Product> for Product {
    fn from(p: pb::Product) -> Self {
        Self {
            id: p.id,
            brand_id: p.brand_id,
            brand_name: p.brand_name,
            name: p.name,
            price: p.price,
            status: ProductStatus::from_proto(p.status),
            like_count: p.like_count,
            stock: p.stock.map(|s| Stock {
                available: s.available,
                reserved: s.reserved,
                sold: s.sold,
            }),
            created_at: time(p.created_at),
            updated_at: time(p.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductPage {
    pub items: Vec<Product>,
    pub page: i32,
    pub size: i32,
    pub total: i64,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProductSort {
    Latest,
    PriceAsc,
    LikesDesc,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ProductQuery {
    /// Only this brand's products.
    #[param(minimum = 1)]
    pub brand_id: Option<i64>,
    /// `latest` (default), `price_asc` or `likes_desc`.
    #[param(inline)]
    pub sort: Option<ProductSort>,
}

/// Lists products, optionally of one brand, sorted and paged.
#[utoipa::path(
    get, path = "/api/v1/products", tag = "catalogue",
    params(ProductQuery, PageQuery),
    responses((status = 200, body = ProductPage), Errors)
)]
pub async fn list_products(
    State(state): State<Arc<AppState>>,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<ProductQuery>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<ProductPage>, Problem> {
    let brand_id = query
        .brand_id
        .map(|id| positive_id("brandId", id))
        .transpose()?;
    let (page, size) = page.checked()?;
    let sort = match query.sort.unwrap_or(ProductSort::Latest) {
        ProductSort::Latest => pb::ProductSort::Latest,
        ProductSort::PriceAsc => pb::ProductSort::PriceAsc,
        ProductSort::LikesDesc => pb::ProductSort::LikesDesc,
    };
    let request = pb::ListProductsRequest {
        brand_id,
        sort: sort as i32,
        page,
        size,
    };
    let mut client = state.mesh.catalog.clone();
    let listed = deadline
        .call(request, |r| async move { client.list_products(r).await })
        .await?;
    Ok(Json(ProductPage {
        items: listed.products.into_iter().map(Product::from).collect(),
        page: listed.page,
        size: listed.size,
        total: listed.total,
    }))
}

/// One product with its stock.
#[utoipa::path(
    get, path = "/api/v1/products/{productId}", tag = "catalogue",
    params(("productId" = i64, Path, minimum = 1)),
    responses((status = 200, body = Product), Errors)
)]
pub async fn get_product(
    State(state): State<Arc<AppState>>,
    deadline: Deadline,
    ApiPath(product_id): ApiPath<String>,
) -> Result<Json<Product>, Problem> {
    let product_id = path_id("productId", &product_id)?;
    let mut client = state.mesh.catalog.clone();
    let product = deadline
        .call(pb::GetProductRequest { product_id }, |r| async move {
            client.get_product(r).await
        })
        .await?;
    Ok(Json(product.into()))
}

/// One brand.
#[utoipa::path(
    get, path = "/api/v1/brands/{brandId}", tag = "catalogue",
    params(("brandId" = i64, Path, minimum = 1)),
    responses((status = 200, body = Brand), Errors)
)]
pub async fn get_brand(
    State(state): State<Arc<AppState>>,
    deadline: Deadline,
    ApiPath(brand_id): ApiPath<String>,
) -> Result<Json<Brand>, Problem> {
    let brand_id = path_id("brandId", &brand_id)?;
    let mut client = state.mesh.catalog.clone();
    let brand = deadline
        .call(pb::GetBrandRequest { brand_id }, |r| async move {
            client.get_brand(r).await
        })
        .await?;
    Ok(Json(brand.into()))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RankingWindow {
    Day,
    Week,
    Month,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct PopularQuery {
    /// `day` (default), `week` or `month`, ending today.
    #[param(inline)]
    pub window: Option<RankingWindow>,
    /// How many products, 10 unless asked.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PopularProduct {
    pub rank: i32,
    pub units_sold: i64,
    pub product: Option<Product>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PopularProducts {
    pub window: RankingWindow,
    pub items: Vec<PopularProduct>,
}

/// Best sellers of a window, from the sales ranking.
#[utoipa::path(
    get, path = "/api/v1/products/popular", tag = "catalogue",
    params(PopularQuery),
    responses((status = 200, body = PopularProducts), Errors)
)]
pub async fn popular_products(
    State(state): State<Arc<AppState>>,
    deadline: Deadline,
    ApiQuery(query): ApiQuery<PopularQuery>,
) -> Result<Json<PopularProducts>, Problem> {
    let window = query.window.unwrap_or(RankingWindow::Day);
    let limit = in_range("limit", query.limit.unwrap_or(10), 1, 100)? as i32;
    let request = pb::ListPopularProductsRequest {
        window: match window {
            RankingWindow::Day => pb::RankingWindow::Day,
            RankingWindow::Week => pb::RankingWindow::Week,
            RankingWindow::Month => pb::RankingWindow::Month,
        } as i32,
        limit,
    };
    let mut client = state.mesh.catalog.clone();
    let popular = deadline
        .call(
            request,
            |r| async move { client.list_popular_products(r).await },
        )
        .await?;
    Ok(Json(PopularProducts {
        window,
        items: popular
            .products
            .into_iter()
            .map(|p| PopularProduct {
                rank: p.rank,
                units_sold: p.units_sold,
                product: p.product.map(Product::from),
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Like {
    pub product_id: i64,
    pub liked: bool,
    pub like_count: i64,
}

/// Likes a product as the token's user; liking twice is one like.
#[utoipa::path(
    put, path = "/api/v1/products/{productId}/like", tag = "catalogue",
    params(("productId" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses((status = 200, body = Like), Errors)
)]
pub async fn like(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiPath(product_id): ApiPath<String>,
) -> Result<Json<Like>, Problem> {
    set_like(state, shopper, deadline, &product_id, true).await
}

/// Takes the token's user's like back; unliking twice changes nothing.
#[utoipa::path(
    delete, path = "/api/v1/products/{productId}/like", tag = "catalogue",
    params(("productId" = i64, Path, minimum = 1)),
    security(("bearer" = [])),
    responses((status = 200, body = Like), Errors)
)]
pub async fn unlike(
    State(state): State<Arc<AppState>>,
    shopper: Shopper,
    deadline: Deadline,
    ApiPath(product_id): ApiPath<String>,
) -> Result<Json<Like>, Problem> {
    set_like(state, shopper, deadline, &product_id, false).await
}

async fn set_like(
    state: Arc<AppState>,
    shopper: Shopper,
    deadline: Deadline,
    product_id: &str,
    liked: bool,
) -> Result<Json<Like>, Problem> {
    let product_id = path_id("productId", product_id)?;
    let request = pb::LikeProductRequest {
        user_id: shopper.id(),
        product_id,
    };
    let mut client = state.mesh.catalog.clone();
    let answer = deadline
        .call(request, |r| async move {
            if liked {
                client.like_product(r).await
            } else {
                client.unlike_product(r).await
            }
        })
        .await?;
    Ok(Json(Like {
        product_id: answer.product_id,
        liked: answer.liked,
        like_count: answer.like_count,
    }))
}
