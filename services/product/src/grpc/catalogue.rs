//! `commerce.product.v1.CatalogService`: catalogue reads and likes.

use commerce_platform::UserId;
use commerce_platform::paging::PageRequest;
use commerce_platform::validate;
use commerce_proto::product::v1 as pb;
use pb::catalog_service_server::CatalogService;
use tonic::{Request, Response, Status};

use super::{
    brand_to_proto, product_to_proto, sort_from_proto, window_from_proto, window_to_proto,
};
use crate::domain::{LikeOutcome, ProductQuery};
use crate::ranking::{PopularLimit, Ranking};
use crate::store::ProductStore;

pub struct Catalogue {
    store: ProductStore,
    ranking: Ranking,
}

impl Catalogue {
    pub fn new(store: ProductStore, ranking: Ranking) -> Self {
        Self { store, ranking }
    }
}

fn like_to_proto(outcome: LikeOutcome) -> pb::LikeProductResponse {
    pb::LikeProductResponse {
        product_id: outcome.product_id,
        liked: outcome.liked,
        like_count: outcome.like_count,
    }
}

#[tonic::async_trait]
impl CatalogService for Catalogue {
    #[tracing::instrument(skip_all, fields(brand_id = request.get_ref().brand_id))]
    async fn get_brand(
        &self,
        request: Request<pb::GetBrandRequest>,
    ) -> Result<Response<pb::Brand>, Status> {
        let brand_id = validate::id("brand_id", request.into_inner().brand_id)?;
        let brand = self.store.brand_get(brand_id).await?;
        Ok(Response::new(brand_to_proto(brand)))
    }

    #[tracing::instrument(skip_all, fields(product_id = request.get_ref().product_id))]
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::Product>, Status> {
        let product_id = validate::id("product_id", request.into_inner().product_id)?;
        let product = self.store.product_get(product_id).await?;
        Ok(Response::new(product_to_proto(product)))
    }

    #[tracing::instrument(skip_all, fields(brand_id = ?request.get_ref().brand_id))]
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let request = request.into_inner();
        let query = ProductQuery {
            brand_id: request
                .brand_id
                .map(|id| validate::id("brand_id", id))
                .transpose()?,
            sort: sort_from_proto("sort", request.sort)?,
            page: PageRequest::parse(request.page, request.size)?,
        };
        let page = self.store.products_list(&query).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.products.into_iter().map(product_to_proto).collect(),
            page: query.page.page,
            size: query.page.size,
            total: page.total,
        }))
    }

    #[tracing::instrument(skip_all, fields(product_id = request.get_ref().product_id))]
    async fn like_product(
        &self,
        request: Request<pb::LikeProductRequest>,
    ) -> Result<Response<pb::LikeProductResponse>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let product_id = validate::id("product_id", request.product_id)?;
        let outcome = self.store.like_add(&user, product_id).await?;
        Ok(Response::new(like_to_proto(outcome)))
    }

    #[tracing::instrument(skip_all, fields(product_id = request.get_ref().product_id))]
    async fn unlike_product(
        &self,
        request: Request<pb::LikeProductRequest>,
    ) -> Result<Response<pb::LikeProductResponse>, Status> {
        let request = request.into_inner();
        let user = UserId::parse("user_id", &request.user_id)?;
        let product_id = validate::id("product_id", request.product_id)?;
        let outcome = self.store.like_remove(&user, product_id).await?;
        Ok(Response::new(like_to_proto(outcome)))
    }

    #[tracing::instrument(skip_all, fields(window = request.get_ref().window, limit = request.get_ref().limit))]
    async fn list_popular_products(
        &self,
        request: Request<pb::ListPopularProductsRequest>,
    ) -> Result<Response<pb::ListPopularProductsResponse>, Status> {
        let request = request.into_inner();
        let window = window_from_proto("window", request.window)?;
        let limit = PopularLimit::parse("limit", request.limit)?;
        let popular = self.ranking.popular(window, limit).await?;
        Ok(Response::new(pb::ListPopularProductsResponse {
            window: window_to_proto(window).into(),
            products: popular
                .into_iter()
                .map(|p| pb::PopularProduct {
                    rank: i32::try_from(p.rank).unwrap_or(i32::MAX),
                    units_sold: p.units_sold,
                    product: Some(product_to_proto(p.product)),
                })
                .collect(),
        }))
    }
}
