//! `commerce.product.v1.ProductAdminService`: brands, products and stock.

use commerce_platform::validate;
use commerce_proto::product::v1 as pb;
use pb::product_admin_service_server::ProductAdminService;
use tonic::{Request, Response, Status};

use super::{brand_to_proto, product_to_proto, status_from_proto, stock_to_proto};
use crate::domain::{
    BrandChanges, BrandDescription, BrandName, NewBrand, NewProduct, Price, ProductChanges,
    ProductName, ProductStatus, StockUnits,
};
use crate::ranking::{Ranking, RebuildDays};
use crate::store::ProductStore;

pub struct ProductAdmin {
    store: ProductStore,
    ranking: Ranking,
}

impl ProductAdmin {
    pub fn new(store: ProductStore, ranking: Ranking) -> Self {
        Self { store, ranking }
    }
}

#[tonic::async_trait]
impl ProductAdminService for ProductAdmin {
    #[tracing::instrument(skip_all)]
    async fn create_brand(
        &self,
        request: Request<pb::CreateBrandRequest>,
    ) -> Result<Response<pb::Brand>, Status> {
        let request = request.into_inner();
        let brand = NewBrand {
            name: BrandName::parse("name", &request.name)?,
            description: BrandDescription::parse("description", &request.description)?,
        };
        let brand = self.store.brand_create(&brand).await?;
        Ok(Response::new(brand_to_proto(brand)))
    }

    #[tracing::instrument(skip_all, fields(brand_id = request.get_ref().brand_id))]
    async fn update_brand(
        &self,
        request: Request<pb::UpdateBrandRequest>,
    ) -> Result<Response<pb::Brand>, Status> {
        let request = request.into_inner();
        let brand_id = validate::id("brand_id", request.brand_id)?;
        let changes = BrandChanges {
            name: request
                .name
                .map(|name| BrandName::parse("name", &name))
                .transpose()?,
            description: request
                .description
                .map(|text| BrandDescription::parse("description", &text))
                .transpose()?,
        };
        let brand = self.store.brand_update(brand_id, &changes).await?;
        Ok(Response::new(brand_to_proto(brand)))
    }

    #[tracing::instrument(skip_all, fields(brand_id = request.get_ref().brand_id))]
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let request = request.into_inner();
        let product = NewProduct {
            brand_id: validate::id("brand_id", request.brand_id)?,
            name: ProductName::parse("name", &request.name)?,
            price: Price::parse("price", request.price)?,
            status: status_from_proto("status", request.status, Some(ProductStatus::OnSale))?,
            stock: StockUnits::parse("stock", request.stock)?,
        };
        let product = self.store.product_create(&product).await?;
        Ok(Response::new(product_to_proto(product)))
    }

    #[tracing::instrument(skip_all, fields(product_id = request.get_ref().product_id))]
    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let request = request.into_inner();
        let product_id = validate::id("product_id", request.product_id)?;
        let changes = ProductChanges {
            name: request
                .name
                .map(|name| ProductName::parse("name", &name))
                .transpose()?,
            price: request
                .price
                .map(|price| Price::parse("price", price))
                .transpose()?,
            status: request
                .status
                .map(|status| status_from_proto("status", status, None))
                .transpose()?,
        };
        let product = self.store.product_update(product_id, &changes).await?;
        Ok(Response::new(product_to_proto(product)))
    }

    #[tracing::instrument(skip_all, fields(product_id = request.get_ref().product_id))]
    async fn set_stock(
        &self,
        request: Request<pb::SetStockRequest>,
    ) -> Result<Response<pb::Stock>, Status> {
        let request = request.into_inner();
        let product_id = validate::id("product_id", request.product_id)?;
        let available = StockUnits::parse("available", request.available)?;
        let stock = self.store.stock_set(product_id, available).await?;
        Ok(Response::new(stock_to_proto(stock)))
    }

    #[tracing::instrument(skip_all, fields(days = request.get_ref().days))]
    async fn rebuild_ranking(
        &self,
        request: Request<pb::RebuildRankingRequest>,
    ) -> Result<Response<pb::RebuildRankingResponse>, Status> {
        let days = RebuildDays::parse("days", request.into_inner().days)?;
        let report = self.ranking.rebuild(days).await?;
        Ok(Response::new(pb::RebuildRankingResponse {
            orders_counted: report.orders_counted,
            orders_cancelled: report.orders_cancelled,
            days: i32::try_from(report.days).unwrap_or(i32::MAX),
        }))
    }
}
