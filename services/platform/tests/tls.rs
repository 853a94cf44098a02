//! Mutual TLS and per-method authorization over real loopback connections:
//! a server with the point service's policy table, called by clients holding
//! the certificates of different identities, by a client with no
//! certificate and by one whose certificate another CA signed.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::path::{Path, PathBuf};

use commerce_platform::rate_limit::{RATE_LIMITED, RateLimits};
use commerce_platform::tls::{CALLER_NOT_ALLOWED, Identity, TlsFiles, certs, policy};
use commerce_platform::{Application, ServerConfig, ServiceSpec, migrate};
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::point::v1::point_service_server::{PointService, PointServiceServer};
use commerce_proto::point::v1::*;
use commerce_proto::saga::v1::ListBarriersRequest;
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use commerce_testkit::{TestDatabase, TestServer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

/// A participant with no tables beyond the barrier, serving a point service
/// that answers a balance with the caller's identity and nothing else.
const SPEC: ServiceSpec = ServiceSpec {
    name: "bare",
    default_listen: "127.0.0.1:0",
    default_database_url: "",
    migrations: &migrate::BARRIER_MIGRATIONS,
    saga_participant: true,
};

struct WhoAmI;

#[tonic::async_trait]
impl PointService for WhoAmI {
    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<Balance>, Status> {
        let caller = Identity::of_grpc_request(&request)
            .map(|identity| identity.to_string())
            .unwrap_or_default();
        Ok(Response::new(Balance {
            user_id: caller,
            balance: 0,
        }))
    }

    async fn charge(&self, _: Request<ChargeRequest>) -> Result<Response<ChargeResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_ledger(
        &self,
        _: Request<ListLedgerRequest>,
    ) -> Result<Response<ListLedgerResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn deduct_points(
        &self,
        _: Request<DeductPointsRequest>,
    ) -> Result<Response<DeductPointsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn refund_points(
        &self,
        _: Request<RefundPointsRequest>,
    ) -> Result<Response<RefundPointsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn cert_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("commerce-tls-{}", uuid::Uuid::new_v4()));
    certs::ensure_dev_certs(&dir).unwrap();
    dir
}

/// A server with the point policy and the point certificate of `dir`.
async fn start(db: &TestDatabase, dir: &Path) -> TestServer {
    start_limited(db, dir, RateLimits::none()).await
}

/// The same, with per-caller rate limits.
async fn start_limited(db: &TestDatabase, dir: &Path, limits: RateLimits) -> TestServer {
    let mut config = ServerConfig::for_tests("bare", db.url.clone());
    config.tls = Some(TlsFiles::in_dir(dir, "point"));
    config.rate_limits = limits;
    let app = Application::build(&SPEC, config)
        .await
        .unwrap()
        .add_service(PointServiceServer::new(WhoAmI))
        .with_policy(policy::POINT);
    TestServer::start(app)
}

fn endpoint(server: &TestServer) -> Endpoint {
    Endpoint::from_shared(format!("https://{}", server.addr)).unwrap()
}

/// A channel presenting `identity`'s certificate from `dir`.
fn channel_as(server: &TestServer, dir: &Path, identity: &str) -> Channel {
    let tls = TlsFiles::in_dir(dir, identity)
        .client_config("localhost")
        .unwrap();
    endpoint(server).tls_config(tls).unwrap().connect_lazy()
}

fn balance_request() -> GetBalanceRequest {
    GetBalanceRequest {
        user_id: "u-1".to_owned(),
    }
}

fn assert_refused(status: &Status, caller: &str, method: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, CALLER_NOT_ALLOWED);
    assert_eq!(info.domain, "commerce");
    assert_eq!(info.metadata["caller"], caller);
    assert_eq!(info.metadata["method"], method);
}

#[tokio::test]
async fn allowed_callers_are_served_and_named_to_the_handler() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let server = start(&db, &dir).await;

    for caller in ["bff", "operator"] {
        let mut points = PointServiceClient::new(channel_as(&server, &dir, caller));
        let balance = points.get_balance(balance_request()).await.unwrap();
        assert_eq!(balance.into_inner().user_id, caller);
    }
    // A whole-service rule: the barrier admin is the operator's.
    let mut admin = SagaBarrierServiceClient::new(channel_as(&server, &dir, "operator"));
    admin
        .list_barriers(ListBarriersRequest {
            saga_id: "0b6f7d1c-3a2e-4b5f-8c9d-0e1f2a3b4c5d".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn other_callers_are_refused_with_who_and_what() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let server = start(&db, &dir).await;

    let mut points = PointServiceClient::new(channel_as(&server, &dir, "orchestrator"));
    let refused = points.get_balance(balance_request()).await.unwrap_err();
    assert_refused(
        &refused,
        "orchestrator",
        "/commerce.point.v1.PointService/GetBalance",
    );

    // Refused before the handler (which would answer UNIMPLEMENTED).
    let mut points = PointServiceClient::new(channel_as(&server, &dir, "bff"));
    let refused = points
        .refund_points(RefundPointsRequest::default())
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        "bff",
        "/commerce.point.v1.PointService/RefundPoints",
    );

    let mut admin = SagaBarrierServiceClient::new(channel_as(&server, &dir, "bff"));
    let refused = admin
        .list_barriers(ListBarriersRequest::default())
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        "bff",
        "/commerce.saga.v1.SagaBarrierService/ListBarriers",
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_answers_any_certificate_of_the_mesh() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let server = start(&db, &dir).await;

    for caller in ["fulfilment", "bff", "coupon"] {
        let mut health = HealthClient::new(channel_as(&server, &dir, caller));
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    server.stop().await.unwrap();
}

/// The server ends the handshake with an alert. Under TLS 1.3 the client
/// has already sent its Finished when the server judges its certificate, so
/// the alert arrives with the first request and tonic reports UNKNOWN
/// ("transport error") with the alert in its source, rather than the
/// UNAVAILABLE of a handshake that fails on the client's side.
fn assert_no_connection(failed: &Status) {
    assert!(
        matches!(failed.code(), Code::Unavailable | Code::Unknown),
        "{failed:?}"
    );
    assert!(
        failed.code() == Code::Unavailable || format!("{failed:?}").contains("fatal alert"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn no_certificate_or_a_foreign_one_gets_no_connection() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let server = start(&db, &dir).await;
    let check = || HealthCheckRequest {
        service: String::new(),
    };

    // Trusts the server, presents nothing.
    let ca = Certificate::from_pem(std::fs::read(certs::ca_path(&dir)).unwrap());
    let anonymous = endpoint(&server)
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_lazy();
    let failed = HealthClient::new(anonymous)
        .check(check())
        .await
        .unwrap_err();
    assert_no_connection(&failed);

    // A certificate that names an identity, signed by another CA.
    let elsewhere = cert_dir();
    let forged = TlsFiles {
        ca: certs::ca_path(&dir),
        ..TlsFiles::in_dir(&elsewhere, "operator")
    };
    let forged = endpoint(&server)
        .tls_config(forged.client_config("localhost").unwrap())
        .unwrap()
        .connect_lazy();
    let failed = HealthClient::new(forged).check(check()).await.unwrap_err();
    assert_no_connection(&failed);

    // Plaintext.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy();
    let failed = HealthClient::new(plain).check(check()).await.unwrap_err();
    assert_ne!(failed.code(), Code::Ok, "{failed:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_refuses_to_start_with_a_method_its_policy_does_not_name() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let mut config = ServerConfig::for_tests("bare", db.url.clone());
    config.tls = Some(TlsFiles::in_dir(&dir, "point"));
    let app = Application::build(&SPEC, config)
        .await
        .unwrap()
        .add_service(PointServiceServer::new(WhoAmI))
        // The coupon table has no rule for the point service.
        .with_policy(policy::COUPON);
    let error = app
        .run_until_stopped(std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("/commerce.point.v1.PointService/GetBalance"),
        "{error}"
    );
}

#[tokio::test]
async fn a_caller_over_its_ceiling_is_refused_and_the_others_are_still_served() {
    let db = TestDatabase::create("bare").await.unwrap();
    let dir = cert_dir();
    let limits = RateLimits::none().with_overrides(["bff=1/3"]).unwrap();
    let server = start_limited(&db, &dir, limits).await;
    let mut bff = PointServiceClient::new(channel_as(&server, &dir, "bff"));
    let mut operator = PointServiceClient::new(channel_as(&server, &dir, "operator"));

    // A burst of 3 then 1 a second: 10 calls in a row outrun it (unless
    // each took a second), and every refusal says who, why and when.
    let mut refused = Vec::new();
    for _ in 0..10 {
        if let Err(status) = bff.get_balance(balance_request()).await {
            refused.push(status);
        }
    }
    assert!(!refused.is_empty(), "10 calls in a row within a burst of 3");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, RATE_LIMITED);
        assert_eq!(info.metadata["caller"], "bff");
        let retry = status.get_details_retry_info().unwrap();
        assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");
    }
    // Another caller is not starved.
    for _ in 0..10 {
        operator.get_balance(balance_request()).await.unwrap();
    }
    server.stop().await.unwrap();
}
