//! The trust boundary, probed the way the issue did ("5 of 7 · The trust
//! boundary"): an attacker on the mesh's network charges points out of
//! nothing, makes a product free, burns another user's coupon, takes back
//! the points, stock and coupon of a CONFIRMED order, compensates another
//! user's saga, ships an order, reads anyone's orders and lists every
//! service through reflection. Each call is made again with no credential
//! (plaintext, TLS without a certificate, a certificate of another CA) and
//! with every mesh certificate whose identity the policy does not name:
//! the first get no connection, the second PERMISSION_DENIED naming caller
//! and method, and the shop is the same afterwards. The callers the policy
//! names are still served, each within its scope.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use commerce_platform::error::ERROR_DOMAIN;
use commerce_platform::tls::certs::{self, CLIENTS, SERVERS};
use commerce_platform::tls::{CALLER_NOT_ALLOWED, TlsFiles};
use commerce_proto::codec::CommerceCodec;
use commerce_proto::coupon::v1 as coupon;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::OrderState;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::point::v1 as point;
use commerce_proto::point::v1::point_service_client::PointServiceClient;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::product_admin_service_client::ProductAdminServiceClient;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use commerce_proto::prost::Message as _;
use commerce_testkit::assert_status;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{Mesh, Node};
use crate::shop;

/// The victim: a CONFIRMED order paid with points and a coupon.
const ALICE: &str = "alice";
/// Holds a coupon nobody has used.
const BOB: &str = "bob";
/// The attacker's own account.
const MALLORY: &str = "mallory";
const HAT_PRICE: i64 = 3_000;
/// A lease fence above any the orchestrator used: were a saga call let
/// through, the participant's fence check would not be what stopped it.
const ATTACKERS_FENCE: i64 = 1 << 40;
/// Bound of one call: a refused handshake or call ends long before.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every identity the mesh's CA certifies.
fn identities() -> impl Iterator<Item = &'static str> {
    SERVERS.iter().chain(CLIENTS).copied()
}

fn servers(mesh: &Mesh) -> [&Node; 4] {
    [
        &mesh.product,
        &mesh.point,
        &mesh.coupon,
        mesh.orchestrator(),
    ]
}

/// What the attacks aim at, staged through the doors the policy opens.
struct Target {
    hat: i64,
    /// Alice's CONFIRMED order of two hats, paid with points and her coupon.
    order: order::Order,
    bobs_coupon: i64,
}

/// Everything an attack would change, for "nothing changed" checks.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Stock, balances of alice, bob and mallory, their coupons.
    world: shop::World,
    /// The hat, its price among the rest.
    hat: product::Product,
    order: order::Order,
    /// Alice's saga with its step log.
    saga: order::SagaDetail,
    reservation: product::Reservation,
}

impl Target {
    async fn stage(mesh: &Mesh) -> Self {
        let brand = shop::brand(mesh, "Acme").await;
        let hat = shop::product(mesh, brand, "Hat", HAT_PRICE, 10).await;
        shop::charge(mesh, ALICE, 50_000).await;
        shop::charge(mesh, MALLORY, 10_000).await;
        shop::charge(mesh, BOB, 10_000).await;
        let template = shop::fixed_template(mesh, 1_000, 0, 10, false).await;
        let alices_coupon = shop::issue(mesh, template, ALICE).await;
        let bobs_coupon = shop::issue(mesh, template, BOB).await;
        let order = shop::place(mesh, ALICE, &[(hat, 2)], Some(alices_coupon)).await;
        assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
        // The order is CONFIRMED inside the saga's last step; its log and
        // state are written after.
        shop::eventually(mesh, "alice's saga completed", || async {
            let saga = shop::saga_detail(mesh, &order.saga_id).await.saga?;
            (saga.state == order::SagaState::Completed as i32).then_some(())
        })
        .await;
        Self {
            hat,
            order,
            bobs_coupon,
        }
    }

    async fn snapshot(&self, mesh: &Mesh) -> Snapshot {
        let hat = mesh
            .catalog()
            .get_product(product::GetProductRequest {
                product_id: self.hat,
            })
            .await
            .unwrap()
            .into_inner();
        let reservation = mesh
            .stock()
            .get_reservation(product::SagaRequest {
                saga_id: self.order.saga_id.clone(),
                saga_fence: 0,
            })
            .await
            .unwrap()
            .into_inner();
        Snapshot {
            world: shop::world(mesh, &[self.hat], &[ALICE, BOB, MALLORY]).await,
            hat,
            order: shop::order(mesh, ALICE, &self.order.order_id).await,
            saga: shop::saga_detail(mesh, &self.order.saga_id).await,
            reservation,
        }
    }
}

/// One call the issue found open to anyone.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Ten million points for mallory, out of nothing.
    ChargeTenMillion,
    /// The hat's price set to 0.
    FreeHat,
    /// Bob's coupon used up by a saga of the attacker's, in bob's name.
    BurnBobsCoupon,
    /// Points taken from alice by a saga of the attacker's.
    DeductAlicesPoints,
    /// Alice's points given back while her order stays CONFIRMED.
    RefundAlicesPoints,
    /// Alice's hats put back on sale while her order stays CONFIRMED.
    ReleaseAlicesStock,
    /// Alice's coupon made usable again while her order stays CONFIRMED.
    RestoreAlicesCoupon,
    /// Alice's saga turned around through the operators' service.
    CompensateAlicesSaga,
    /// Alice's order marked shipped.
    ShipAlicesOrder,
    /// Alice's order read without naming a user, as operators read.
    ReadAlicesOrder,
    /// Alice's orders listed.
    ListAlicesOrders,
}

impl Attack {
    const ALL: [Self; 11] = [
        Self::ChargeTenMillion,
        Self::FreeHat,
        Self::BurnBobsCoupon,
        Self::DeductAlicesPoints,
        Self::RefundAlicesPoints,
        Self::ReleaseAlicesStock,
        Self::RestoreAlicesCoupon,
        Self::CompensateAlicesSaga,
        Self::ShipAlicesOrder,
        Self::ReadAlicesOrder,
        Self::ListAlicesOrders,
    ];

    /// The method called, as a refusal names it.
    fn method(self) -> &'static str {
        match self {
            Self::ChargeTenMillion => "/commerce.point.v1.PointService/Charge",
            Self::FreeHat => "/commerce.product.v1.ProductAdminService/UpdateProduct",
            Self::BurnBobsCoupon => "/commerce.coupon.v1.CouponService/UseCoupon",
            Self::DeductAlicesPoints => "/commerce.point.v1.PointService/DeductPoints",
            Self::RefundAlicesPoints => "/commerce.point.v1.PointService/RefundPoints",
            Self::ReleaseAlicesStock => "/commerce.product.v1.StockService/ReleaseReservation",
            Self::RestoreAlicesCoupon => "/commerce.coupon.v1.CouponService/RestoreCoupon",
            Self::CompensateAlicesSaga => "/commerce.order.v1.SagaAdminService/CompensateSaga",
            Self::ShipAlicesOrder => "/commerce.order.v1.OrderService/MarkShipped",
            Self::ReadAlicesOrder => "/commerce.order.v1.OrderService/GetOrder",
            Self::ListAlicesOrders => "/commerce.order.v1.OrderService/ListOrders",
        }
    }

    fn server(self, mesh: &Mesh) -> &Node {
        match self {
            Self::ChargeTenMillion | Self::DeductAlicesPoints | Self::RefundAlicesPoints => {
                &mesh.point
            }
            Self::FreeHat | Self::ReleaseAlicesStock => &mesh.product,
            Self::BurnBobsCoupon | Self::RestoreAlicesCoupon => &mesh.coupon,
            Self::CompensateAlicesSaga
            | Self::ShipAlicesOrder
            | Self::ReadAlicesOrder
            | Self::ListAlicesOrders => mesh.orchestrator(),
        }
    }

    /// Who may make this call, as the issue decides: saga steps are the
    /// orchestrator's, admin the operators', shipping the operators' and
    /// fulfilment's, user-facing calls the BFF's and the operators'.
    fn allowed(self) -> &'static [&'static str] {
        match self {
            Self::BurnBobsCoupon
            | Self::DeductAlicesPoints
            | Self::RefundAlicesPoints
            | Self::ReleaseAlicesStock
            | Self::RestoreAlicesCoupon => &["orchestrator"],
            Self::FreeHat | Self::CompensateAlicesSaga => &["operator"],
            Self::ShipAlicesOrder => &["operator", "fulfilment"],
            Self::ChargeTenMillion | Self::ReadAlicesOrder | Self::ListAlicesOrders => {
                &["bff", "operator"]
            }
        }
    }

    /// Makes the call over `channel`.
    async fn run(self, channel: Channel, target: &Target) -> Result<(), Status> {
        let alices_saga = target.order.saga_id.clone();
        let attackers_saga = uuid::Uuid::new_v4().to_string();
        let order_id = target.order.order_id.clone();
        let mut points = PointServiceClient::new(channel.clone());
        let mut coupons = CouponServiceClient::new(channel.clone());
        let mut stock = StockServiceClient::new(channel.clone());
        let mut orders = OrderServiceClient::new(channel.clone());
        match self {
            Self::ChargeTenMillion => points
                .charge(point::ChargeRequest {
                    user_id: MALLORY.to_owned(),
                    amount: 10_000_000,
                    idempotency_key: attackers_saga,
                })
                .await
                .map(drop),
            Self::FreeHat => ProductAdminServiceClient::new(channel)
                .update_product(product::UpdateProductRequest {
                    product_id: target.hat,
                    price: Some(0),
                    ..Default::default()
                })
                .await
                .map(drop),
            Self::BurnBobsCoupon => coupons
                .use_coupon(coupon::UseCouponRequest {
                    saga_id: attackers_saga,
                    user_id: BOB.to_owned(),
                    user_coupon_id: target.bobs_coupon,
                    order_amount: HAT_PRICE,
                    expected_discount: None,
                    saga_fence: ATTACKERS_FENCE,
                })
                .await
                .map(drop),
            Self::DeductAlicesPoints => points
                .deduct_points(point::DeductPointsRequest {
                    saga_id: attackers_saga,
                    user_id: ALICE.to_owned(),
                    amount: 10_000,
                    saga_fence: ATTACKERS_FENCE,
                })
                .await
                .map(drop),
            Self::RefundAlicesPoints => points
                .refund_points(point::RefundPointsRequest {
                    saga_id: alices_saga,
                    saga_fence: ATTACKERS_FENCE,
                })
                .await
                .map(drop),
            Self::ReleaseAlicesStock => stock
                .release_reservation(product::SagaRequest {
                    saga_id: alices_saga,
                    saga_fence: ATTACKERS_FENCE,
                })
                .await
                .map(drop),
            Self::RestoreAlicesCoupon => coupons
                .restore_coupon(coupon::RestoreCouponRequest {
                    saga_id: alices_saga,
                    saga_fence: ATTACKERS_FENCE,
                })
                .await
                .map(drop),
            Self::CompensateAlicesSaga => compensate(channel, &alices_saga).await,
            Self::ShipAlicesOrder => orders
                .mark_shipped(order::OrderRef { order_id })
                .await
                .map(drop),
            Self::ReadAlicesOrder => orders
                .get_order(shop::get_order_request("", &order_id))
                .await
                .map(drop),
            Self::ListAlicesOrders => orders
                .list_orders(order::ListOrdersRequest {
                    user_id: ALICE.to_owned(),
                    page: 0,
                    size: 10,
                })
                .await
                .map(drop),
        }
    }
}

/// Charge's path dressed up as another: under the open health service, with
/// dot segments, doubled slashes, escapes and a trailing slash.
const DISGUISED_CHARGE: [&str; 9] = [
    "/grpc.health.v1.Health/../commerce.point.v1.PointService/Charge",
    "/grpc.health.v1.Health/%2E%2E/commerce.point.v1.PointService/Charge",
    "/grpc.health.v1.Health/..%2Fcommerce.point.v1.PointService%2FCharge",
    "/grpc.health.v1.Health/./../commerce.point.v1.PointService/Charge",
    "//commerce.point.v1.PointService/Charge",
    "/commerce.point.v1.PointService//Charge",
    "/commerce.point.v1.PointService/Charge/",
    "/commerce.point.v1.PointService/%43harge",
    "/commerce.point.v1.PointService/Charge;x",
];

/// Ten million points for mallory, sent to `path` over `channel`.
async fn charge_at(channel: Channel, path: &'static str) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let request = tonic::Request::new(point::ChargeRequest {
        user_id: MALLORY.to_owned(),
        amount: 10_000_000,
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    });
    let codec = CommerceCodec::<point::ChargeRequest, point::ChargeResponse>::default();
    grpc.unary(request, PathAndQuery::from_static(path), codec)
        .await
        .map(drop)
}

/// CompensateSaga of `saga_id` over `channel`.
async fn compensate(channel: Channel, saga_id: &str) -> Result<(), Status> {
    SagaAdminServiceClient::new(channel)
        .compensate_saga(order::SagaRef {
            saga_id: saga_id.to_owned(),
        })
        .await
        .map(drop)
}

/// Bob's order (with his coupon), held PENDING: its saga waits on the coupon
/// service, stopped (the first step quotes the coupon), so it is still
/// RUNNING and an operator could still turn it around into REJECTED. The
/// coupon attacks must have been made before.
async fn hold_bobs_order(mesh: &mut Mesh, target: &Target) -> order::Order {
    mesh.coupon.kill().await;
    let request = shop::request(BOB, &[(target.hat, 1)], Some(target.bobs_coupon), "held");
    let held = shop::place_pending(mesh, &mesh.orders(), request).await;
    assert_eq!(shop::state(&held), OrderState::Pending, "{held:?}");
    shop::eventually(mesh, "a FAILED step of bob's saga", || async {
        let detail = shop::saga_detail(mesh, &held.saga_id).await;
        detail
            .log
            .iter()
            .any(|e| e.outcome == order::StepOutcome::Failed as i32)
            .then_some(())
    })
    .await;
    held
}

/// After the attempts to compensate it: bob's saga still goes forward, and
/// with the coupon service back his order ends CONFIRMED, not REJECTED.
async fn release_bobs_order(mesh: &mut Mesh, held: &order::Order) {
    let saga = shop::saga_detail(mesh, &held.saga_id).await.saga.unwrap();
    assert_eq!(saga.state, order::SagaState::Running as i32, "{saga:?}");
    mesh.coupon.start().await;
    let settled = shop::settled(mesh, BOB, &held.order_id).await;
    assert_eq!(shop::state(&settled), OrderState::Confirmed, "{settled:?}");
}

/// How a caller presents itself to a server.
#[derive(Debug, Clone, Copy)]
enum Caller<'a> {
    /// No TLS at all, to a TLS port.
    Plaintext,
    /// TLS trusting the mesh's CA, with no certificate to show.
    NoCertificate,
    /// The operator's certificate of another CA (made in this directory).
    OtherCa(&'a Path),
    /// A certificate of the mesh naming this identity.
    Mesh(&'static str),
}

impl Caller<'_> {
    fn mesh_ca(node: &Node) -> PathBuf {
        node.tls_files("operator").expect("the mesh serves TLS").ca
    }

    /// The files an other-CA caller presents: that CA's operator
    /// certificate, and trust in the mesh's CA (so the handshake fails on
    /// the server's side, where it must).
    fn other_ca_files(dir: &Path, node: &Node) -> TlsFiles {
        TlsFiles {
            ca: Self::mesh_ca(node),
            ..TlsFiles::in_dir(dir, "operator")
        }
    }

    fn channel(self, node: &Node) -> Channel {
        let endpoint = match self {
            Self::Plaintext => Endpoint::from_shared(node.endpoint()).unwrap(),
            Self::NoCertificate => {
                let ca = Certificate::from_pem(std::fs::read(Self::mesh_ca(node)).unwrap());
                Endpoint::from_shared(format!("https://{}", node.addr()))
                    .unwrap()
                    .tls_config(ClientTlsConfig::new().ca_certificate(ca))
                    .unwrap()
            }
            Self::OtherCa(dir) => Self::other_ca_files(dir, node)
                .endpoint(&node.endpoint())
                .unwrap(),
            Self::Mesh(identity) => return node.channel_as(identity),
        };
        endpoint
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy()
    }

    fn grpcurl_flags(self, node: &Node) -> Vec<String> {
        match self {
            Self::Plaintext => vec!["-plaintext".to_owned()],
            Self::NoCertificate => vec![
                "-cacert".to_owned(),
                Self::mesh_ca(node).display().to_string(),
            ],
            Self::OtherCa(dir) => {
                commerce_testkit::grpcurl_flags(Some(&Self::other_ca_files(dir, node)))
            }
            Self::Mesh(identity) => {
                commerce_testkit::grpcurl_flags(node.tls_files(identity).as_ref())
            }
        }
    }
}

/// `grpcurl <flags> <node> list`: the services reflection names, or
/// grpcurl's complaint.
async fn grpcurl_list(node: &Node, flags: &[String]) -> Result<Vec<String>, String> {
    let run = tokio::process::Command::new(commerce_testkit::grpcurl())
        .args(flags)
        .args(["-max-time", "30", &node.addr(), "list"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("grpcurl finished")
        .expect("grpcurl runs (deploy/setup.sh installs it, or set GRPCURL)");
    if output.status.success() {
        let listed = String::from_utf8(output.stdout).unwrap();
        Ok(listed.lines().map(str::to_owned).collect())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A call that got no connection: the handshake failed, so no server code
/// ran and the error is the client's own transport's, never an answer.
/// With TLS, UNAVAILABLE when the client's side gives up, UNKNOWN when the
/// server's alert arrives with the first request (TLS 1.3; see
/// services/platform/tests/tls.rs). In plaintext, also INTERNAL: the
/// client reads the server's TLS alert as an HTTP/2 frame (FRAME_SIZE_ERROR).
#[track_caller]
fn assert_no_connection(result: Result<(), Status>, what: &str) {
    let status = match result {
        Ok(()) => panic!("{what}: served"),
        Err(status) => status,
    };
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{what}: {status:?}"
    );
    let transport = std::error::Error::source(&status)
        .is_some_and(|cause| cause.is::<tonic::transport::Error>());
    assert!(transport, "{what}: not a transport failure: {status:?}");
}

/// A refusal of the authorization layer: PERMISSION_DENIED with an
/// `ErrorInfo` naming the caller and the method.
#[track_caller]
fn assert_refused(result: Result<(), Status>, caller: &str, method: &str) {
    let status = match result {
        Ok(()) => panic!("{caller} {method}: served"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{caller} {method}: {status:?}"
    );
    let info = error_info(&status).unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    let named = |key: &str| info.metadata.get(key).map(String::as_str);
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        (CALLER_NOT_ALLOWED, ERROR_DOMAIN),
        "{status:?}"
    );
    assert_eq!(
        (named("caller"), named("method")),
        (Some(caller), Some(method)),
        "{status:?}"
    );
}

/// `google.rpc.Status` as far as its details: this crate has prost (through
/// commerce-proto) but not tonic-types.
#[derive(Clone, PartialEq, commerce_proto::prost::Message)]
#[prost(prost_path = "::commerce_proto::prost")]
struct RpcStatus {
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, commerce_proto::prost::Message)]
#[prost(prost_path = "::commerce_proto::prost")]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, commerce_proto::prost::Message)]
#[prost(prost_path = "::commerce_proto::prost")]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

fn error_info(status: &Status) -> Option<ErrorInfo> {
    RpcStatus::decode(status.details())
        .ok()?
        .details
        .into_iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.ErrorInfo")
        .and_then(|any| ErrorInfo::decode(any.value.as_slice()).ok())
}

#[tokio::test]
async fn without_a_certificate_of_the_mesh_there_is_no_connection_and_nothing_changes() {
    let mut mesh = Mesh::start(1).await;
    let target = Target::stage(&mesh).await;
    let before = target.snapshot(&mesh).await;
    let elsewhere =
        std::env::temp_dir().join(format!("commerce-other-ca-{}", uuid::Uuid::new_v4()));
    certs::ensure_dev_certs(&elsewhere).unwrap();

    let strangers = [
        Caller::Plaintext,
        Caller::NoCertificate,
        Caller::OtherCa(&elsewhere),
    ];
    for caller in strangers {
        for attack in Attack::ALL {
            let answer = attack
                .run(caller.channel(attack.server(&mesh)), &target)
                .await;
            assert_no_connection(answer, &format!("{caller:?} {attack:?}"));
        }
        // grpcurl redials a failed handshake until its connect timeout:
        // a short one only bounds how long each refusal takes.
        let listings = servers(&mesh).map(|node| async move {
            let mut flags = caller.grpcurl_flags(node);
            flags.extend(["-connect-timeout".to_owned(), "2".to_owned()]);
            (node.service, grpcurl_list(node, &flags).await)
        });
        for (server, listed) in futures::future::join_all(listings).await {
            assert!(listed.is_err(), "{caller:?} listed {server}: {listed:?}");
        }
    }

    assert_eq!(target.snapshot(&mesh).await, before);
    assert_eq!(before.order.state, OrderState::Confirmed as i32);

    let held = hold_bobs_order(&mut mesh, &target).await;
    for caller in strangers {
        let answer = compensate(caller.channel(mesh.orchestrator()), &held.saga_id).await;
        assert_no_connection(answer, &format!("{caller:?} compensating a running saga"));
    }
    release_bobs_order(&mut mesh, &held).await;
    let _ = std::fs::remove_dir_all(&elsewhere);
    mesh.shutdown().await;
}

#[tokio::test]
async fn identities_the_policy_does_not_name_are_refused_by_name_and_nothing_changes() {
    let mut mesh = Mesh::start(1).await;
    let target = Target::stage(&mesh).await;
    let before = target.snapshot(&mesh).await;

    for attack in Attack::ALL {
        for caller in identities().filter(|id| !attack.allowed().contains(id)) {
            let answer = attack
                .run(Caller::Mesh(caller).channel(attack.server(&mesh)), &target)
                .await;
            assert_refused(answer, caller, attack.method());
        }
    }
    // Nor does a guarded method dressed up as another: no rule names the
    // path (refused) or no service serves it (unimplemented).
    for path in DISGUISED_CHARGE {
        let answer = charge_at(mesh.point.channel_as("fulfilment"), path).await;
        let code = answer.as_ref().map_err(Status::code);
        assert!(
            matches!(code, Err(Code::PermissionDenied | Code::Unimplemented)),
            "{path}: {answer:?}"
        );
    }
    // Reflection is the operators'.
    for node in servers(&mesh) {
        for caller in identities().filter(|id| *id != "operator") {
            let refused = grpcurl_list(node, &Caller::Mesh(caller).grpcurl_flags(node))
                .await
                .unwrap_err();
            assert!(
                refused.contains("PermissionDenied")
                    && refused.contains(&format!("{caller} may not call /grpc.reflection.")),
                "{caller} listing {}: {refused}",
                node.service
            );
        }
    }

    assert_eq!(target.snapshot(&mesh).await, before);

    let held = hold_bobs_order(&mut mesh, &target).await;
    let compensations = Attack::CompensateAlicesSaga;
    for caller in identities().filter(|id| !compensations.allowed().contains(id)) {
        let answer = compensate(
            Caller::Mesh(caller).channel(mesh.orchestrator()),
            &held.saga_id,
        )
        .await;
        assert_refused(answer, caller, compensations.method());
    }
    release_bobs_order(&mut mesh, &held).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn the_callers_the_policy_names_are_served_within_their_scope() {
    let mesh = Mesh::start(1).await;
    let target = Target::stage(&mesh).await;
    let orchestrator = mesh.orchestrator();
    let mut bff = OrderServiceClient::new(orchestrator.channel_as("bff"));
    let mut operator = OrderServiceClient::new(orchestrator.channel_as("operator"));
    let mut fulfilment = OrderServiceClient::new(orchestrator.channel_as("fulfilment"));

    // The BFF places orders and reads them for the user it names.
    let placed = bff
        .place_order(shop::request(
            ALICE,
            &[(target.hat, 1)],
            None,
            "trust-boundary",
        ))
        .await
        .unwrap()
        .into_inner();
    let placed = shop::settled(&mesh, ALICE, &placed.order_id).await;
    assert_eq!(shop::state(&placed), OrderState::Confirmed, "{placed:?}");
    let read = bff
        .get_order(shop::get_order_request(ALICE, &placed.order_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, placed);
    assert_status(
        bff.get_order(shop::get_order_request(MALLORY, &placed.order_id))
            .await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    assert_status(
        bff.get_order(shop::get_order_request("", &placed.order_id))
            .await,
        Code::InvalidArgument,
        "user_id",
    );
    assert_status(
        bff.cancel_order(order::CancelOrderRequest {
            order_id: placed.order_id.clone(),
            user_id: MALLORY.to_owned(),
        })
        .await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    // Operators read any order without naming its user.
    let read = operator
        .get_order(shop::get_order_request("", &placed.order_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, placed);

    // Fulfilment ships and delivers; operators may ship too.
    let order_ref = |order: &order::Order| order::OrderRef {
        order_id: order.order_id.clone(),
    };
    let shipped = fulfilment.mark_shipped(order_ref(&placed)).await.unwrap();
    assert_eq!(shipped.into_inner().state, OrderState::Shipped as i32);
    let delivered = fulfilment.mark_delivered(order_ref(&placed)).await.unwrap();
    assert_eq!(delivered.into_inner().state, OrderState::Delivered as i32);
    let shipped = operator
        .mark_shipped(order_ref(&target.order))
        .await
        .unwrap();
    assert_eq!(shipped.into_inner().state, OrderState::Shipped as i32);

    // The orchestrator's compensations of a saga that did nothing are no-ops.
    let nothing_done = uuid::Uuid::new_v4().to_string();
    let released = StockServiceClient::new(mesh.product.channel_as("orchestrator"))
        .release_reservation(product::SagaRequest {
            saga_id: nothing_done.clone(),
            saga_fence: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!released.released, "{released:?}");
    let refunded = PointServiceClient::new(mesh.point.channel_as("orchestrator"))
        .refund_points(point::RefundPointsRequest {
            saga_id: nothing_done.clone(),
            saga_fence: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refunded.refunded, "{refunded:?}");
    let restored = CouponServiceClient::new(mesh.coupon.channel_as("orchestrator"))
        .restore_coupon(coupon::RestoreCouponRequest {
            saga_id: nothing_done,
            saga_fence: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!restored.restored, "{restored:?}");

    // Through the BFF, bob's coupon in mallory's order is refused and stays
    // bob's, unused; mallory pays nothing.
    let mallorys_balance = shop::balance(&mesh, MALLORY).await;
    let placed = bff
        .place_order(shop::request(
            MALLORY,
            &[(target.hat, 1)],
            Some(target.bobs_coupon),
            "bobs-coupon",
        ))
        .await
        .unwrap()
        .into_inner();
    let rejected = shop::settled(&mesh, MALLORY, &placed.order_id).await;
    assert_eq!(
        (shop::state(&rejected), rejected.reason.as_str()),
        (OrderState::Rejected, "USER_COUPON_NOT_FOUND"),
        "{rejected:?}"
    );
    let bobs = shop::coupon_of(&mesh, BOB, target.bobs_coupon).await;
    assert_eq!(
        bobs.state,
        coupon::UserCouponState::Available as i32,
        "{bobs:?}"
    );
    assert_eq!(shop::balance(&mesh, MALLORY).await, mallorys_balance);

    // Operators list every service, the admin ones included; any mesh
    // certificate gets health answers.
    for node in servers(&mesh) {
        let listed = grpcurl_list(node, &node.grpcurl_flags()).await.unwrap();
        let admin: &[&str] = match node.service {
            "product" => &[
                "commerce.product.v1.ProductAdminService",
                "commerce.saga.v1.SagaBarrierService",
            ],
            "point" => &["commerce.saga.v1.SagaBarrierService"],
            "coupon" => &[
                "commerce.coupon.v1.CouponAdminService",
                "commerce.saga.v1.SagaBarrierService",
            ],
            _ => &["commerce.order.v1.SagaAdminService"],
        };
        for service in admin {
            assert!(
                listed.iter().any(|s| s == service),
                "{service} on {}: {listed:?}",
                node.service
            );
        }
        for caller in identities() {
            let health = HealthClient::new(node.channel_as(caller))
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(health.status, ServingStatus::Serving as i32, "{caller}");
        }
    }
    mesh.shutdown().await;
}
