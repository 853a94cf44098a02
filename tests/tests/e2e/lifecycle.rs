//! An order after its saga: cancellation (a compensating saga that restores
//! stock, points and coupon), fulfilment (shipped, delivered), the
//! transitions the state machine refuses, and the operators' view of the
//! sagas through grpcurl.

use std::collections::HashMap;
use std::time::Duration;

use commerce_proto::coupon::v1::UserCouponState;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::OrderState;
use commerce_testkit::assert_status;
use serde_json::Value;
use tonic::{Code, Status};

use crate::harness::{Mesh, Node};
use crate::shop::{self, assert_invariants};

async fn cancel(mesh: &Mesh, order_id: &str, user: &str) -> Result<order::Order, Status> {
    mesh.orders()
        .cancel_order(order::CancelOrderRequest {
            order_id: order_id.to_owned(),
            user_id: user.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn read(mesh: &Mesh, user: &str, order_id: &str) -> Result<order::Order, Status> {
    mesh.orders()
        .get_order(shop::get_order_request(user, order_id))
        .await
        .map(tonic::Response::into_inner)
}

async fn ship(mesh: &Mesh, order_id: &str) -> Result<order::Order, Status> {
    mesh.orders()
        .mark_shipped(order::OrderRef {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn deliver(mesh: &Mesh, order_id: &str) -> Result<order::Order, Status> {
    mesh.orders()
        .mark_delivered(order::OrderRef {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn counts(mesh: &Mesh) -> order::CountSagasResponse {
    mesh.sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner()
}

const CONFLICT: &str = "ORDER_STATE_CONFLICT";

#[tokio::test]
async fn an_order_is_read_by_its_user_alone() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let hat = shop::product(&mesh, brand, "Hat", 2_000, 10).await;
    shop::charge(&mesh, "frank", 10_000).await;
    let placed = shop::place(&mesh, "frank", &[(hat, 1)], None).await;
    assert_eq!(shop::state(&placed), OrderState::Confirmed, "{placed:?}");

    // Its user reads it.
    assert_eq!(
        read(&mesh, "frank", &placed.order_id).await.unwrap(),
        placed
    );

    // Another user is told it does not exist, in the words an unknown id
    // gets, so ids cannot be probed.
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let others = read(&mesh, "mallory", &placed.order_id).await;
    let unknown = read(&mesh, "mallory", &unknown_id).await;
    assert_status(others.clone(), Code::NotFound, "ORDER_NOT_FOUND");
    assert_status(unknown.clone(), Code::NotFound, "ORDER_NOT_FOUND");
    let words = |answer: Result<order::Order, Status>, id: &str| {
        answer.unwrap_err().message().replace(id, "<id>")
    };
    assert_eq!(words(others, &placed.order_id), words(unknown, &unknown_id));

    // Every caller but an operator names the user it reads for, a valid one.
    for user in ["", "not a user"] {
        assert_status(
            read(&mesh, user, &placed.order_id).await,
            Code::InvalidArgument,
            "user_id",
        );
    }
    // Lists are by user too, and show no one else's orders.
    assert_status(
        mesh.orders()
            .list_orders(order::ListOrdersRequest {
                user_id: String::new(),
                page: 0,
                size: 10,
            })
            .await,
        Code::InvalidArgument,
        "user_id",
    );
    let mallorys = shop::orders_of(&mesh, &["mallory".to_owned()]).await;
    assert!(mallorys.is_empty(), "{mallorys:?}");

    // None of it changed the order.
    assert_eq!(shop::order(&mesh, "frank", &placed.order_id).await, placed);
    let charged = HashMap::from([("frank".to_owned(), 10_000)]);
    assert_invariants(&mesh, &[(hat, 10)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn cancel_ship_and_deliver_follow_the_order_state_machine() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    let sock = shop::product(&mesh, brand, "Sock", 1_500, 10).await;
    shop::charge(&mesh, "carol", 100_000).await;
    shop::charge(&mesh, "dave", 1_000).await;
    let template = shop::fixed_template(&mesh, 3_000, 10_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "carol").await;
    let products = [shoe, sock];
    let before = shop::world(&mesh, &products, &["carol"]).await;

    let placed = shop::place(&mesh, "carol", &[(shoe, 2), (sock, 1)], Some(coupon_id)).await;
    assert_eq!(shop::state(&placed), OrderState::Confirmed, "{placed:?}");
    assert_eq!(placed.points_paid, 25_500 - 3_000);
    let confirmed = shop::world(&mesh, &products, &["carol"]).await;

    // Another user's order is not found, and nothing changes.
    assert_status(
        cancel(&mesh, &placed.order_id, "mallory").await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    assert_eq!(shop::world(&mesh, &products, &["carol"]).await, confirmed);

    // Cancelling (five times at once: one cancel saga) restores stock,
    // points and the coupon.
    let answers =
        futures::future::join_all((0..5).map(|_| cancel(&mesh, &placed.order_id, "carol"))).await;
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.order_id, placed.order_id);
        assert!(
            [OrderState::Cancelling as i32, OrderState::Cancelled as i32].contains(&answer.state),
            "{answer:?}"
        );
    }
    let cancelled = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;
    assert_eq!(
        shop::state(&cancelled),
        OrderState::Cancelled,
        "{cancelled:?}"
    );
    assert_eq!(shop::world(&mesh, &products, &["carol"]).await, before);
    let coupon = shop::coupon_of(&mesh, "carol", coupon_id).await;
    assert_eq!(
        (coupon.state, coupon.used_by_saga.as_str()),
        (UserCouponState::Available as i32, "")
    );
    assert_eq!(shop::stock(&mesh, shoe).await.available, 10);
    assert_eq!(shop::balance(&mesh, "carol").await, 100_000);
    let after_cancel = counts(&mesh).await;
    assert_eq!(
        (after_cancel.completed, after_cancel.running),
        (2, 0),
        "place and cancel: {after_cancel:?}"
    );

    // The cancel saga undid the placing saga's steps, then finished.
    let sagas = mesh
        .sagas()
        .list_sagas(order::ListSagasRequest {
            state: order::SagaState::Completed as i32,
            min_age_seconds: 0,
            page: 0,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .sagas;
    let cancel_saga = sagas
        .iter()
        .find(|s| s.kind == order::SagaKind::CancelOrder as i32)
        .unwrap();
    assert_eq!(cancel_saga.order_id, placed.order_id);
    let detail = mesh
        .sagas()
        .get_saga(order::SagaRef {
            saga_id: cancel_saga.saga_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let done: Vec<&str> = detail
        .log
        .iter()
        .filter(|e| e.outcome == order::StepOutcome::Succeeded as i32)
        .map(|e| e.step_name.as_str())
        .collect();
    assert_eq!(
        done,
        [
            "release_stock",
            "refund_points",
            "restore_coupon",
            "finish_cancel"
        ]
    );

    // Cancelling again answers the cancelled order and starts nothing.
    let again = cancel(&mesh, &placed.order_id, "carol").await.unwrap();
    assert_eq!(
        (again.order_id.as_str(), again.state),
        (placed.order_id.as_str(), OrderState::Cancelled as i32)
    );
    assert_eq!(counts(&mesh).await, after_cancel);
    assert_eq!(shop::world(&mesh, &products, &["carol"]).await, before);
    assert_status(
        ship(&mesh, &placed.order_id).await,
        Code::FailedPrecondition,
        CONFLICT,
    );

    // The restored coupon is usable again.
    let reorder = shop::place(&mesh, "carol", &[(shoe, 1)], Some(coupon_id)).await;
    assert_eq!(shop::state(&reorder), OrderState::Confirmed, "{reorder:?}");
    assert_eq!((reorder.discount, reorder.points_paid), (3_000, 9_000));

    // Fulfilment: delivered only once shipped; shipped cannot be cancelled.
    assert_status(
        deliver(&mesh, &reorder.order_id).await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    let shipped = ship(&mesh, &reorder.order_id).await.unwrap();
    assert_eq!(shipped.state, OrderState::Shipped as i32);
    let shipped_world = shop::world(&mesh, &products, &["carol"]).await;
    let sagas_before = counts(&mesh).await;
    assert_status(
        cancel(&mesh, &reorder.order_id, "carol").await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    assert_status(
        ship(&mesh, &reorder.order_id).await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    assert_eq!(
        shop::world(&mesh, &products, &["carol"]).await,
        shipped_world
    );
    assert_eq!(
        counts(&mesh).await,
        sagas_before,
        "no cancel saga for a shipped order"
    );
    let delivered = deliver(&mesh, &reorder.order_id).await.unwrap();
    assert_eq!(delivered.state, OrderState::Delivered as i32);
    assert_status(
        cancel(&mesh, &reorder.order_id, "carol").await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    assert_status(
        deliver(&mesh, &reorder.order_id).await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    let s = shop::stock(&mesh, shoe).await;
    assert_eq!((s.available, s.reserved, s.sold), (9, 0, 1));

    // A coupon worth the whole order: nothing to pay, nothing deducted, and
    // cancelling it refunds nothing and restores the coupon.
    let whole = shop::fixed_template(&mesh, 3_000, 0, 10, false).await;
    let free_coupon = shop::issue(&mesh, whole, "dave").await;
    let dave_before = shop::world(&mesh, &products, &["dave"]).await;
    let free = shop::place(&mesh, "dave", &[(sock, 1)], Some(free_coupon)).await;
    assert_eq!(shop::state(&free), OrderState::Confirmed, "{free:?}");
    assert_eq!(
        (free.subtotal, free.discount, free.points_paid),
        (1_500, 1_500, 0)
    );
    assert_eq!(shop::balance(&mesh, "dave").await, 1_000);
    cancel(&mesh, &free.order_id, "dave").await.unwrap();
    let free = shop::settled(&mesh, &free.user_id, &free.order_id).await;
    assert_eq!(shop::state(&free), OrderState::Cancelled, "{free:?}");
    assert_eq!(shop::world(&mesh, &products, &["dave"]).await, dave_before);

    // A rejected order cannot be cancelled or shipped.
    let refused = shop::place(&mesh, "dave", &[(shoe, 1)], None).await;
    assert_eq!(
        (shop::state(&refused), refused.reason.as_str()),
        (OrderState::Rejected, "POINT_INSUFFICIENT")
    );
    assert_status(
        cancel(&mesh, &refused.order_id, "dave").await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    assert_status(
        ship(&mesh, &refused.order_id).await,
        Code::FailedPrecondition,
        CONFLICT,
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_status(
        ship(&mesh, &unknown).await,
        Code::NotFound,
        "ORDER_NOT_FOUND",
    );
    assert_status(
        ship(&mesh, "not-a-uuid").await,
        Code::InvalidArgument,
        "order_id",
    );

    let end = counts(&mesh).await;
    assert_eq!((end.completed, end.compensated), (5, 1), "{end:?}");
    let charged = HashMap::from([("carol".to_owned(), 100_000), ("dave".to_owned(), 1_000)]);
    assert_invariants(&mesh, &[(shoe, 10), (sock, 10)], &charged).await;
    mesh.shutdown().await;
}

/// Runs grpcurl against `node` as an operator (its certificate, as the
/// README's recipes do): `args` come after the address (a method or
/// `list`); `body` is the JSON request. Returns stdout, or stderr on failure.
async fn grpcurl(node: &Node, body: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = tokio::process::Command::new(commerce_testkit::grpcurl());
    command.args(node.grpcurl_flags());
    if let Some(body) = body {
        command.args(["-d", body]);
    }
    command.arg(node.addr()).args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("grpcurl finished")
        .expect("grpcurl runs (deploy/setup.sh installs it, or set GRPCURL)");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn operators_read_sagas_with_grpcurl() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    shop::charge(&mesh, "erin", 50_000).await;
    let template = shop::fixed_template(&mesh, 3_000, 10_000, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "erin").await;
    let with_coupon = shop::place(&mesh, "erin", &[(shoe, 2)], Some(coupon_id)).await;
    let plain = shop::place(&mesh, "erin", &[(shoe, 1)], None).await;
    let refused = shop::place(&mesh, "erin", &[(shoe, 3)], None).await;
    assert_eq!(shop::state(&with_coupon), OrderState::Confirmed);
    assert_eq!(shop::state(&plain), OrderState::Confirmed);
    assert_eq!(refused.reason, "POINT_INSUFFICIENT", "{refused:?}");

    let services = grpcurl(mesh.orchestrator(), None, &["list"]).await.unwrap();
    let services: Vec<&str> = services.lines().collect();
    for service in [
        "commerce.order.v1.OrderService",
        "commerce.order.v1.SagaAdminService",
    ] {
        assert!(services.contains(&service), "{service} in {services:?}");
    }

    // A finished saga's log: every step STARTED then SUCCEEDED, forward.
    let body = format!(r#"{{"sagaId":"{}"}}"#, with_coupon.saga_id);
    let detail = json(
        &grpcurl(
            mesh.orchestrator(),
            Some(&body),
            &["commerce.order.v1.SagaAdminService/GetSaga"],
        )
        .await
        .unwrap(),
    );
    assert_eq!(detail["saga"]["state"], "SAGA_STATE_COMPLETED", "{detail}");
    assert_eq!(detail["saga"]["orderId"], with_coupon.order_id.as_str());
    let log = detail["log"].as_array().unwrap();
    let events: Vec<(&str, &str)> = log
        .iter()
        .map(|e| {
            assert_eq!(e["direction"], "STEP_DIRECTION_FORWARD", "{e}");
            (
                e["stepName"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for step in [
        "reserve_stock",
        "deduct_points",
        "use_coupon",
        "confirm_order",
    ] {
        expected.push((step, "STEP_OUTCOME_STARTED"));
        expected.push((step, "STEP_OUTCOME_SUCCEEDED"));
    }
    assert_eq!(events, expected, "{detail}");
    let reserved = log
        .iter()
        .find(|e| e["stepName"] == "reserve_stock" && e["outcome"] == "STEP_OUTCOME_SUCCEEDED")
        .unwrap();
    let response = json(reserved["responseJson"].as_str().unwrap());
    assert_eq!(response["pricing"]["payable"], 21_000, "{response}");

    // Counts and lists.
    let counts = json(
        &grpcurl(
            mesh.orchestrator(),
            Some("{}"),
            &["commerce.order.v1.SagaAdminService/CountSagas"],
        )
        .await
        .unwrap(),
    );
    // int64 fields are JSON strings; zero counts are omitted.
    assert_eq!(counts["completed"], "2", "{counts}");
    assert_eq!(counts["compensated"], "1", "{counts}");
    assert!(
        counts.get("running").is_none() && counts.get("stuck").is_none(),
        "{counts}"
    );
    let listed = json(
        &grpcurl(
            mesh.orchestrator(),
            Some(r#"{"state":"SAGA_STATE_COMPLETED","size":10}"#),
            &["commerce.order.v1.SagaAdminService/ListSagas"],
        )
        .await
        .unwrap(),
    );
    let mut ids: Vec<&str> = listed["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["state"], "SAGA_STATE_COMPLETED", "{s}");
            assert_eq!(s["kind"], "SAGA_KIND_PLACE_ORDER", "{s}");
            s["sagaId"].as_str().unwrap()
        })
        .collect();
    ids.sort_unstable();
    let mut expected = vec![with_coupon.saga_id.as_str(), plain.saga_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{listed}");
    // Nothing unfinished: the default listing is empty.
    let unfinished = json(
        &grpcurl(
            mesh.orchestrator(),
            Some(r#"{"size":10}"#),
            &["commerce.order.v1.SagaAdminService/ListSagas"],
        )
        .await
        .unwrap(),
    );
    assert!(unfinished.get("sagas").is_none(), "{unfinished}");
    // A malformed id is refused, naming the field.
    let refused = grpcurl(
        mesh.orchestrator(),
        Some(r#"{"sagaId":"nope"}"#),
        &["commerce.order.v1.SagaAdminService/GetSaga"],
    )
    .await
    .unwrap_err();
    assert!(
        refused.contains("InvalidArgument") && refused.contains("saga_id"),
        "{refused}"
    );

    let charged = HashMap::from([("erin".to_owned(), 50_000)]);
    assert_invariants(&mesh, &[(shoe, 10)], &charged).await;
    mesh.shutdown().await;
}
