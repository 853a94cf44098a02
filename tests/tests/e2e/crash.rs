//! The orchestrator aborting (as `kill -9` would) right before or right
//! after a participant call, at every step boundary of the order saga, of its
//! compensation and of a cancellation: once restarted it resumes the saga
//! from its step log to the end an uninterrupted run reaches, and every
//! participant applied each effect exactly once.

use std::collections::HashMap;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::{Order, OrderState, PlaceOrderRequest};
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use tonic::Status;

use crate::harness::Mesh;
use crate::shop::{self, FORWARD, assert_invariants};

const CRASH_AT: &str = "ORCHESTRATOR_CRASH_AT";

/// The state of a saga's reservation at the product service.
async fn reservation(mesh: &Mesh, saga_id: &str) -> product::ReservationState {
    let reservation = mesh
        .stock()
        .get_reservation(product::SagaRequest {
            saga_id: saga_id.to_owned(),
            saga_fence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    product::ReservationState::try_from(reservation.state).unwrap()
}

/// Restarts the orchestrator armed to abort at `point`.
async fn arm(mesh: &mut Mesh, point: &str) {
    let node = &mut mesh.orchestrators[0];
    node.kill().await;
    node.start_with(&[(CRASH_AT, point)]).await;
}

/// Checks that the armed call died with the process, waits for the abort
/// and restarts the orchestrator unarmed.
async fn aborted<T: std::fmt::Debug>(mesh: &mut Mesh, point: &str, call: Result<T, Status>) {
    assert!(
        call.is_err(),
        "{point}: the armed orchestrator answered {call:?}"
    );
    let exit = mesh.orchestrators[0].wait_exit().await;
    assert!(
        !exit.success(),
        "{point}: the orchestrator must abort, got {exit}"
    );
    mesh.orchestrators[0].start().await;
}

/// Places `request` on an orchestrator armed to abort at `point`, restarts
/// it and waits for the order (the only one of its user, as the call gave
/// no id) to settle.
async fn crash_then_resume(mesh: &mut Mesh, point: &str, request: PlaceOrderRequest) -> Order {
    let user = request.user_id.clone();
    arm(mesh, point).await;
    let placed = mesh.orders().place_order(request.clone()).await;
    aborted(mesh, point, placed).await;

    let recorded = shop::only_order_of(mesh, &user).await;
    // The client retrying its unanswered call gets that same order.
    let retried = mesh
        .orders()
        .place_order(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.order_id, recorded.order_id, "{point}");
    shop::settled(mesh, &recorded.user_id, &recorded.order_id).await
}

#[tokio::test]
async fn crash_at_every_step_boundary_resumes_to_confirmed_once() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Sturdy").await;
    let template = shop::fixed_template(&mesh, 3_000, 10_000, 100, false).await;
    let mut products = Vec::new();
    let mut charged = HashMap::new();

    for (i, point) in FORWARD
        .iter()
        .flat_map(|step| [format!("before:{step}"), format!("after:{step}")])
        .enumerate()
    {
        let user = format!("crash-{i}");
        let item = shop::product(&mesh, brand, &format!("Item {i}"), 10_000, 5).await;
        shop::charge(&mesh, &user, 50_000).await;
        let coupon_id = shop::issue(&mesh, template, &user).await;
        let key = uuid::Uuid::new_v4().to_string();

        let order = crash_then_resume(
            &mut mesh,
            &point,
            shop::request(&user, &[(item, 2)], Some(coupon_id), &key),
        )
        .await;

        assert_eq!(
            shop::state(&order),
            OrderState::Confirmed,
            "{point}: {order:?}"
        );
        assert_eq!(
            (order.subtotal, order.discount, order.points_paid),
            (20_000, 3_000, 17_000),
            "{point}"
        );
        let s = shop::stock(&mesh, item).await;
        assert_eq!((s.available, s.reserved, s.sold), (3, 0, 2), "{point}");
        assert_eq!(shop::balance(&mesh, &user).await, 33_000, "{point}");
        let used = shop::coupon_of(&mesh, &user, coupon_id).await;
        assert_eq!(
            (used.state, used.used_by_saga.as_str()),
            (coupon::UserCouponState::Used as i32, order.saga_id.as_str()),
            "{point}"
        );
        shop::assert_forward_once(&mesh, &order.saga_id, &FORWARD).await;
        assert_eq!(
            reservation(&mesh, &order.saga_id).await,
            product::ReservationState::Confirmed,
            "{point}"
        );
        assert_eq!(
            shop::ledger_kinds(&mesh, &user, &order.saga_id).await,
            [point::LedgerKind::Use],
            "{point}: one deduction"
        );
        let one = HashMap::from([(user.clone(), 50_000)]);
        assert_invariants(&mesh, &[(item, 5)], &one).await;

        products.push((item, 5));
        charged.insert(user, 50_000);
    }

    assert_invariants(&mesh, &products, &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn crash_while_compensating_still_ends_rejected_with_everything_back() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Pricey").await;
    let mut products = Vec::new();
    let mut charged = HashMap::new();

    // Not enough points: deduct_points is rejected, so refund_points (a
    // no-op that blocks a late deduction) then release_stock undo it.
    for (i, point) in ["refund_points", "release_stock"]
        .iter()
        .flat_map(|step| [format!("before:{step}"), format!("after:{step}")])
        .enumerate()
    {
        let user = format!("short-{i}");
        let item = shop::product(&mesh, brand, &format!("Watch {i}"), 10_000, 5).await;
        shop::charge(&mesh, &user, 5_000).await;
        let key = uuid::Uuid::new_v4().to_string();

        let order = crash_then_resume(
            &mut mesh,
            &point,
            shop::request(&user, &[(item, 1)], None, &key),
        )
        .await;

        assert_eq!(
            shop::state(&order),
            OrderState::Rejected,
            "{point}: {order:?}"
        );
        assert_eq!(order.reason, "POINT_INSUFFICIENT", "{point}: {order:?}");
        let s = shop::stock(&mesh, item).await;
        assert_eq!((s.available, s.reserved, s.sold), (5, 0, 0), "{point}");
        assert_eq!(shop::balance(&mesh, &user).await, 5_000, "{point}");
        let (rejected, undone) =
            shop::assert_compensated(&mesh, &order.saga_id, "POINT_INSUFFICIENT").await;
        assert_eq!(rejected, "deduct_points", "{point}");
        assert_eq!(undone, ["refund_points", "release_stock"], "{point}");
        assert_eq!(
            reservation(&mesh, &order.saga_id).await,
            product::ReservationState::Released,
            "{point}"
        );
        assert!(
            shop::ledger_kinds(&mesh, &user, &order.saga_id)
                .await
                .is_empty(),
            "{point}: nothing deducted, nothing refunded"
        );
        let one = HashMap::from([(user.clone(), 5_000)]);
        assert_invariants(&mesh, &[(item, 5)], &one).await;

        products.push((item, 5));
        charged.insert(user, 5_000);
    }

    assert_invariants(&mesh, &products, &charged).await;
    mesh.shutdown().await;
}

/// The cancel saga of an order, found among the finished sagas.
async fn cancel_saga_of(mesh: &Mesh, order_id: &str) -> Vec<order::Saga> {
    let mut found = Vec::new();
    for page in 0..100 {
        let sagas = mesh
            .sagas()
            .list_sagas(order::ListSagasRequest {
                state: order::SagaState::Completed as i32,
                min_age_seconds: 0,
                page,
                size: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .sagas;
        let last = sagas.len() < 100;
        found.extend(
            sagas.into_iter().filter(|s| {
                s.order_id == order_id && s.kind == order::SagaKind::CancelOrder as i32
            }),
        );
        if last {
            break;
        }
    }
    found
}

#[tokio::test]
async fn crash_at_every_step_of_a_cancellation_resumes_to_cancelled() {
    const CANCEL: [&str; 4] = [
        "release_stock",
        "refund_points",
        "restore_coupon",
        "finish_cancel",
    ];
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Returnable").await;
    let template = shop::fixed_template(&mesh, 2_000, 5_000, 100, false).await;
    let mut products = Vec::new();
    let mut charged = HashMap::new();

    for (i, point) in CANCEL
        .iter()
        .flat_map(|step| [format!("before:{step}"), format!("after:{step}")])
        .enumerate()
    {
        let user = format!("regret-{i}");
        let item = shop::product(&mesh, brand, &format!("Coat {i}"), 8_000, 4).await;
        shop::charge(&mesh, &user, 20_000).await;
        let coupon_id = shop::issue(&mesh, template, &user).await;
        let placed = shop::place(&mesh, &user, &[(item, 1)], Some(coupon_id)).await;
        assert_eq!(shop::state(&placed), OrderState::Confirmed, "{placed:?}");
        assert_eq!(shop::balance(&mesh, &user).await, 14_000);

        let cancel = order::CancelOrderRequest {
            order_id: placed.order_id.clone(),
            user_id: user.clone(),
        };
        arm(&mut mesh, &point).await;
        let call = mesh.orders().cancel_order(cancel.clone()).await;
        aborted(&mut mesh, &point, call).await;
        // The client's retry finds the cancellation under way (or done):
        // no second cancel saga.
        let retried = mesh
            .orders()
            .cancel_order(cancel)
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(
                shop::state(&retried),
                OrderState::Cancelling | OrderState::Cancelled
            ),
            "{point}: {retried:?}"
        );
        let order = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;

        assert_eq!(
            shop::state(&order),
            OrderState::Cancelled,
            "{point}: {order:?}"
        );
        let s = shop::stock(&mesh, item).await;
        assert_eq!((s.available, s.reserved, s.sold), (4, 0, 0), "{point}");
        assert_eq!(shop::balance(&mesh, &user).await, 20_000, "{point}");
        let restored = shop::coupon_of(&mesh, &user, coupon_id).await;
        assert_eq!(
            restored.state,
            coupon::UserCouponState::Available as i32,
            "{point}: {restored:?}"
        );
        let sagas = cancel_saga_of(&mesh, &placed.order_id).await;
        assert_eq!(sagas.len(), 1, "{point}: one cancel saga: {sagas:#?}");
        shop::assert_forward_once(&mesh, &sagas[0].saga_id, &CANCEL).await;
        assert_eq!(
            reservation(&mesh, &placed.saga_id).await,
            product::ReservationState::Released,
            "{point}"
        );
        assert_eq!(
            shop::ledger_kinds(&mesh, &user, &placed.saga_id).await,
            [point::LedgerKind::Use, point::LedgerKind::Refund],
            "{point}: one deduction, one refund"
        );
        let one = HashMap::from([(user.clone(), 20_000)]);
        assert_invariants(&mesh, &[(item, 4)], &one).await;

        products.push((item, 4));
        charged.insert(user, 20_000);
    }

    assert_invariants(&mesh, &products, &charged).await;
    mesh.shutdown().await;
}
