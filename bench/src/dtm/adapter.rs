//! The branch endpoints dtm calls, over HTTP: each translates one saga
//! branch into the participant RPC our orchestrator sends for the same step
//! (see `orchestrator/src/participants.rs`), with the dtm global
//! transaction id (`gid`, a UUID the client chose) as the saga id, so the
//! participants' barriers make every retry and every compensation exactly
//! once, as they do for our saga.
//!
//! dtm calls `POST <url>?gid=..&trans_type=saga&branch_id=..&op=action|compensate`
//! with the step's payload (JSON) as body, for the action and for its
//! compensation alike. Results, as dtm reads them
//! (`BranchResult::from_http`): 200 is success; our refusals
//! (FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, the
//! codes our orchestrator compensates on) become 409 with
//! `"dtm_result":"FAILURE"`, so dtm compensates; every other outcome
//! (unavailable, deadline, aborted by a lock conflict) is 503, "unknown":
//! dtm retries the branch later and never compensates on it.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use commerce_platform::tls::TlsFiles;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Deadline of one participant call (dtm's own branch timeout is 10 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The participant services, one HTTP/2 connection each (as the
/// orchestrator has).
#[derive(Clone)]
pub struct Participants {
    stock: StockServiceClient<Channel>,
    points: PointServiceClient<Channel>,
    coupons: CouponServiceClient<Channel>,
}

/// A channel to `uri`, presenting `tls`'s certificate when given (saga
/// steps are the orchestrator's alone: see [`super::server`]).
fn channel(uri: &str, tls: Option<&TlsFiles>) -> anyhow::Result<Channel> {
    Ok(commerce_platform::tls::endpoint(uri, tls)?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_lazy())
}

impl Participants {
    /// Lazy channels to the participants at these URIs, over mutual TLS
    /// with `tls` when given.
    pub fn connect(
        product: &str,
        point: &str,
        coupon: &str,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            stock: StockServiceClient::new(channel(product, tls)?),
            points: PointServiceClient::new(channel(point, tls)?),
            coupons: CouponServiceClient::new(channel(coupon, tls)?),
        })
    }
}

/// Paths of the branch endpoints (the client builds the saga from them).
pub mod paths {
    pub const RESERVE: &str = "/reserve-stock";
    pub const RELEASE: &str = "/release-stock";
    pub const DEDUCT: &str = "/deduct-points";
    pub const REFUND: &str = "/refund-points";
    pub const USE_COUPON: &str = "/use-coupon";
    pub const RESTORE_COUPON: &str = "/restore-coupon";
    pub const CONFIRM: &str = "/confirm-order";
    /// The compensation of the last step: dtm compensates every step of an
    /// aborted saga, and confirming is never undone (it only runs once
    /// every other step succeeded, and nothing can fail after it).
    pub const NOTHING: &str = "/nothing";
}

/// Payload of the reserve step (and of its compensation).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReservePayload {
    /// (product id, quantity).
    pub lines: Vec<(i64, i64)>,
}

/// Payload of the deduct step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeductPayload {
    pub user_id: String,
    pub amount: i64,
}

/// Payload of the coupon step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CouponPayload {
    pub user_id: String,
    pub user_coupon_id: i64,
    pub order_amount: i64,
    pub expected_discount: i64,
}

/// The branch identity dtm sends as query parameters.
#[derive(Debug, Deserialize)]
struct BranchQuery {
    gid: String,
}

pub fn router(participants: Participants) -> Router {
    Router::new()
        .route(paths::RESERVE, post(reserve))
        .route(paths::RELEASE, post(release))
        .route(paths::DEDUCT, post(deduct))
        .route(paths::REFUND, post(refund))
        .route(paths::USE_COUPON, post(use_coupon))
        .route(paths::RESTORE_COUPON, post(restore_coupon))
        .route(paths::CONFIRM, post(confirm))
        .route(paths::NOTHING, post(nothing))
        .with_state(participants)
}

type Answer = (StatusCode, &'static str);

const SUCCESS: Answer = (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#);
const FAILURE: Answer = (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE"}"#);
const UNKNOWN: Answer = (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"retry"}"#);

/// dtm's reading of a participant's answer.
fn answer<T>(result: Result<tonic::Response<T>, Status>, gid: &str, call: &str) -> Answer {
    match result {
        Ok(_) => SUCCESS,
        Err(status) => match status.code() {
            // What our orchestrator treats as a refusal (compensate).
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists => {
                tracing::debug!(gid, call, message = status.message(), "refused");
                FAILURE
            }
            code => {
                tracing::warn!(
                    gid,
                    call,
                    ?code,
                    message = status.message(),
                    "outcome unknown; dtm retries"
                );
                UNKNOWN
            }
        },
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

// Messages are built with `..Default::default()` so fields the services
// add later (they are optional on the wire) need no change here.
#[allow(clippy::needless_update)]
async fn reserve(
    State(p): State<Participants>,
    Query(branch): Query<BranchQuery>,
    Json(body): Json<ReservePayload>,
) -> Answer {
    let lines = body
        .lines
        .iter()
        .map(|&(product_id, quantity)| product::ReserveLine {
            product_id,
            quantity,
            ..Default::default()
        })
        .collect();
    let call = p
        .stock
        .clone()
        .reserve_stock(request(product::ReserveStockRequest {
            saga_id: branch.gid.clone(),
            lines,
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "ReserveStock")
}

#[allow(clippy::needless_update)]
async fn release(State(p): State<Participants>, Query(branch): Query<BranchQuery>) -> Answer {
    let call = p
        .stock
        .clone()
        .release_reservation(request(product::SagaRequest {
            saga_id: branch.gid.clone(),
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "ReleaseReservation")
}

#[allow(clippy::needless_update)]
async fn confirm(State(p): State<Participants>, Query(branch): Query<BranchQuery>) -> Answer {
    let call = p
        .stock
        .clone()
        .confirm_reservation(request(product::SagaRequest {
            saga_id: branch.gid.clone(),
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "ConfirmReservation")
}

#[allow(clippy::needless_update)]
async fn deduct(
    State(p): State<Participants>,
    Query(branch): Query<BranchQuery>,
    Json(body): Json<DeductPayload>,
) -> Answer {
    let call = p
        .points
        .clone()
        .deduct_points(request(point::DeductPointsRequest {
            saga_id: branch.gid.clone(),
            user_id: body.user_id,
            amount: body.amount,
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "DeductPoints")
}

#[allow(clippy::needless_update)]
async fn refund(State(p): State<Participants>, Query(branch): Query<BranchQuery>) -> Answer {
    let call = p
        .points
        .clone()
        .refund_points(request(point::RefundPointsRequest {
            saga_id: branch.gid.clone(),
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "RefundPoints")
}

#[allow(clippy::needless_update)]
async fn use_coupon(
    State(p): State<Participants>,
    Query(branch): Query<BranchQuery>,
    Json(body): Json<CouponPayload>,
) -> Answer {
    let call = p
        .coupons
        .clone()
        .use_coupon(request(coupon::UseCouponRequest {
            saga_id: branch.gid.clone(),
            user_id: body.user_id,
            user_coupon_id: body.user_coupon_id,
            order_amount: body.order_amount,
            expected_discount: Some(body.expected_discount),
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "UseCoupon")
}

#[allow(clippy::needless_update)]
async fn restore_coupon(
    State(p): State<Participants>,
    Query(branch): Query<BranchQuery>,
) -> Answer {
    let call = p
        .coupons
        .clone()
        .restore_coupon(request(coupon::RestoreCouponRequest {
            saga_id: branch.gid.clone(),
            ..Default::default()
        }))
        .await;
    answer(call, &branch.gid, "RestoreCoupon")
}

async fn nothing() -> Answer {
    SUCCESS
}
