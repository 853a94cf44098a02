//! The REST resources: thin handlers that check the input at the edge, call
//! the mesh with the request's deadline and translate its answer. Each
//! module holds one resource's routes beside its JSON shapes; the OpenAPI
//! document is generated from them (`/openapi.json`).

pub mod admin;
pub mod catalog;
pub mod coupons;
pub mod orders;
pub mod points;

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::get;
use chrono::{DateTime, Utc};
use commerce_platform::paging::{MAX_PAGE, MAX_PAGE_SIZE, PageRequest};
use serde::Deserialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::extract::mesh_message;
use crate::problem::{Problem, json_field};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Commerce BFF",
        description = "REST front door of the commerce mesh for shoppers' apps and operators. \
            Shopper routes act for the subject of the bearer token; `/api/v1/admin/*` needs \
            the `operator` role. Every error is `application/problem+json` (RFC 9457) with the \
            mesh's reason and the offending field. gRPC codes map to HTTP statuses by one table: \
            INVALID_ARGUMENT 400, NOT_FOUND 404, ALREADY_EXISTS / FAILED_PRECONDITION / ABORTED \
            409, RESOURCE_EXHAUSTED 429 (Retry-After), UNAVAILABLE 503 (Retry-After), \
            DEADLINE_EXCEEDED 504; the BFF's own: no or bad token 401, missing role 403, body \
            too large 413, not JSON 415. `Prefer: wait=<seconds>` (RFC 7240) shortens a \
            request's deadline, which becomes the mesh call's deadline.",
        version = "1.0.0",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem)),
    tags(
        (name = "catalogue", description = "Brands, products, likes and the sales ranking"),
        (name = "points", description = "The shopper's point balance, ledger and charges"),
        (name = "coupons", description = "The shopper's coupons"),
        (name = "orders", description = "Placing, reading and cancelling the shopper's orders"),
        (name = "admin", description = "Operators: sagas, outbox, catalogue, coupons, shipping")
    )
)]
struct ApiDoc;

/// The `bearer` security scheme every authenticated route names.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        scheme.description = Some(
            "HS256 JWT with `sub` (the user), `exp`, `iss`, `aud`; `role: operator` for \
             operators"
                .to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every route and the OpenAPI document describing them.
pub fn router() -> (axum::Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(catalog::list_products))
        .routes(routes!(catalog::popular_products))
        .routes(routes!(catalog::get_product))
        .routes(routes!(catalog::get_brand))
        .routes(routes!(catalog::like, catalog::unlike))
        .routes(routes!(points::balance))
        .routes(routes!(points::ledger))
        .routes(routes!(points::charge))
        .routes(routes!(coupons::issue, coupons::list_mine))
        .routes(routes!(orders::place, orders::list_mine))
        .routes(routes!(orders::get))
        .routes(routes!(orders::cancel))
        .routes(routes!(admin::saga_counts))
        .routes(routes!(admin::list_sagas))
        .routes(routes!(admin::get_saga))
        .routes(routes!(admin::retry_saga))
        .routes(routes!(admin::compensate_saga))
        .routes(routes!(admin::outbox))
        .routes(routes!(admin::reconcile))
        .routes(routes!(admin::create_brand))
        .routes(routes!(admin::update_brand))
        .routes(routes!(admin::create_product))
        .routes(routes!(admin::update_product))
        .routes(routes!(admin::set_stock))
        .routes(routes!(admin::rebuild_ranking))
        .routes(routes!(admin::create_coupon_template))
        .routes(routes!(admin::get_coupon_template))
        .routes(routes!(admin::get_order))
        .routes(routes!(admin::mark_shipped))
        .routes(routes!(admin::mark_delivered))
        .split_for_parts();
    let document = Arc::new(api.clone());
    let router = router.route(
        "/openapi.json",
        get(move || {
            let document = Arc::clone(&document);
            async move { Json(document.as_ref().clone()) }
        }),
    );
    (router, api)
}

/// A zero-based page of a list, 20 items unless asked.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    /// Zero-based page number.
    #[param(minimum = 0, maximum = 100000)]
    pub page: Option<i32>,
    /// Items per page.
    #[param(minimum = 1, maximum = 100)]
    pub size: Option<i32>,
}

pub const DEFAULT_PAGE_SIZE: i32 = 20;
const _: () = assert!(MAX_PAGE == 100_000 && MAX_PAGE_SIZE == 100);

impl PageQuery {
    /// `(page, size)`, checked by the mesh's own rule.
    pub fn checked(self) -> Result<(i32, i32), Problem> {
        let (page, size) = (
            self.page.unwrap_or(0),
            self.size.unwrap_or(DEFAULT_PAGE_SIZE),
        );
        PageRequest::parse(page, size).map_err(problem_of)?;
        Ok((page, size))
    }
}

/// A mesh validation error (`commerce_platform::validate`) as a 400.
pub fn problem_of(error: commerce_platform::ServiceError) -> Problem {
    match &error {
        commerce_platform::ServiceError::InvalidArgument { field, .. } => {
            Problem::invalid(json_field(field), mesh_message(&error))
        }
        _ => Problem::from(tonic::Status::from(error)),
    }
}

/// A positive id from a path segment or body field.
pub fn positive_id(field: &str, raw: i64) -> Result<i64, Problem> {
    commerce_platform::validate::id(field, raw).map_err(problem_of)
}

/// An integer in `min..=max`.
pub fn in_range(field: &str, raw: i64, min: i64, max: i64) -> Result<i64, Problem> {
    commerce_platform::validate::in_range(field, raw, min, max).map_err(problem_of)
}

/// A path parameter, refused with a problem naming it.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| Problem::invalid("path", rejection.body_text()))
    }
}

/// A path id parameter named `field`: a positive integer.
pub fn path_id(field: &str, raw: &str) -> Result<i64, Problem> {
    let id = raw
        .parse::<i64>()
        .map_err(|_| Problem::invalid(field, "must be a positive integer id"))?;
    positive_id(field, id)
}

/// A protobuf timestamp as a JSON time (`null` when absent).
pub fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|ts| DateTime::from_timestamp(ts.seconds, ts.nanos.clamp(0, 999_999_999) as u32))
}

/// A JSON time as a protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}
