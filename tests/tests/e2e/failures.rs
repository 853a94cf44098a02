//! Failures the README promises to handle, staged with real processes: a
//! compensation that cannot succeed makes the saga STUCK until an operator's
//! `RetrySaga` once the participant is back; a participant refusing
//! connections makes a forward step spend its retry budget, and the order is
//! REJECTED `STEP_RETRIES_EXHAUSTED` with everything undone; an orchestrator
//! that lost its lease to another writes nothing when its late answer comes;
//! and a rejected order shows nothing paid, as nothing was taken.
//!
//! Each test starts the orchestrator it needs (the tests' flags with a few
//! replaced) and waits for states by polling, never by sleeping.

use std::collections::HashMap;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::saga_admin_service_client::SagaAdminServiceClient;
use commerce_proto::order::v1::{OrderState, SagaState, StepDirection, StepOutcome};
use commerce_proto::point::v1 as point;

use crate::harness::{self, Mesh};
use crate::shop::{self, assert_invariants};

const EXHAUSTED: &str = "STEP_RETRIES_EXHAUSTED";

fn count(log: &[order::StepLogEntry], step: &str, d: StepDirection, o: StepOutcome) -> usize {
    log.iter()
        .filter(|e| e.step_name == step && e.direction == d as i32 && e.outcome == o as i32)
        .count()
}

#[tokio::test]
async fn a_stuck_compensation_finishes_after_the_operators_retry() {
    let mut mesh = Mesh::start(0).await;
    // Forward retries give up after a second; an undo is STUCK after three
    // attempts, and left alone for an hour (so only RetrySaga can end it
    // within the test).
    harness::add_stuck_prone_orchestrator(&mut mesh, "orchestrator-stuck").await;
    let brand = shop::brand(&mesh, "Stuck").await;
    let lamp = shop::product(&mesh, brand, "Lamp", 7_000, 10).await;
    shop::charge(&mesh, "sam", 30_000).await;

    // deduct_points cannot reach the point service: its budget runs out,
    // and refund_points (which must reach it, to block a late deduction)
    // cannot either.
    mesh.point.kill().await;
    let key = uuid::Uuid::new_v4().to_string();
    let placed = shop::place_pending(
        &mesh,
        &mesh.orders(),
        shop::request("sam", &[(lamp, 2)], None, &key),
    )
    .await;
    let saga_id = placed.saga_id.clone();
    let stuck = shop::eventually(&mesh, "the saga STUCK", || async {
        let detail = shop::saga_detail(&mesh, &saga_id).await;
        (detail.saga.as_ref().unwrap().state == SagaState::Stuck as i32).then_some(detail)
    })
    .await;
    let saga = stuck.saga.as_ref().unwrap();
    assert_eq!(saga.reason, EXHAUSTED, "{stuck:#?}");
    // The step being undone.
    assert_eq!(saga.current_step_name, "deduct_points", "{stuck:#?}");
    let (f, c) = (StepDirection::Forward, StepDirection::Compensate);
    assert_eq!(
        count(&stuck.log, "deduct_points", f, StepOutcome::Rejected),
        1
    );
    assert_eq!(
        count(&stuck.log, "refund_points", c, StepOutcome::Failed),
        3,
        "three undo attempts, then STUCK: {stuck:#?}"
    );
    assert_eq!(
        count(&stuck.log, "refund_points", c, StepOutcome::Succeeded),
        0
    );
    // Operators see it; the order waits, its stock still held, nothing paid.
    let listed = mesh
        .sagas()
        .list_sagas(order::ListSagasRequest {
            state: SagaState::Stuck as i32,
            min_age_seconds: 0,
            page: 0,
            size: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .sagas;
    assert_eq!(
        listed
            .iter()
            .map(|s| s.saga_id.as_str())
            .collect::<Vec<_>>(),
        [saga_id.as_str()]
    );
    let counts = mesh
        .sagas()
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counts.stuck, counts.running), (1, 0), "{counts:?}");
    let waiting = shop::order(&mesh, &placed.user_id, &placed.order_id).await;
    assert_eq!(shop::state(&waiting), OrderState::Pending, "{waiting:?}");
    assert_eq!(waiting.points_paid, 0, "{waiting:?}");
    let s = shop::stock(&mesh, lamp).await;
    assert_eq!((s.available, s.reserved, s.sold), (8, 2, 0));

    // The operator brings the point service back and retries the saga.
    mesh.point.start().await;
    mesh.sagas()
        .retry_saga(order::SagaRef {
            saga_id: saga_id.clone(),
        })
        .await
        .unwrap();
    let order = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;
    assert_eq!(
        (shop::state(&order), order.reason.as_str()),
        (OrderState::Rejected, EXHAUSTED),
        "{order:?}"
    );
    assert_eq!(
        (order.subtotal, order.discount, order.points_paid),
        (14_000, 0, 0),
        "a rejected order paid nothing: {order:?}"
    );
    let (rejected, undone) = shop::assert_compensated(&mesh, &saga_id, EXHAUSTED).await;
    assert_eq!(rejected, "deduct_points");
    assert_eq!(undone, ["refund_points", "release_stock"]);
    let s = shop::stock(&mesh, lamp).await;
    assert_eq!((s.available, s.reserved, s.sold), (10, 0, 0));
    assert_eq!(shop::balance(&mesh, "sam").await, 30_000);
    assert!(shop::ledger_kinds(&mesh, "sam", &saga_id).await.is_empty());

    let charged = HashMap::from([("sam".to_owned(), 30_000)]);
    assert_invariants(&mesh, &[(lamp, 10)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_participant_refusing_connections_ends_the_order_when_the_budget_is_spent() {
    let mut mesh = Mesh::start(0).await;
    let mut node = harness::orchestrator(
        &mesh,
        "orchestrator-budget",
        &[("--forward-retry-budget-ms", "1500")],
    );
    node.start().await;
    mesh.orchestrators.push(node);
    let brand = shop::brand(&mesh, "Budget").await;
    let chair = shop::product(&mesh, brand, "Chair", 9_000, 6).await;
    shop::charge(&mesh, "rita", 50_000).await;
    let template = shop::fixed_template(&mesh, 1_000, 0, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "rita").await;

    // The coupon service refuses connections (killed, not restarted while
    // the order runs): reserve_stock reserves, then cannot quote the
    // coupon, and is retried until its budget is spent. Its undo only needs
    // the product service, so the saga ends while the coupon service is
    // still down.
    mesh.coupon.kill().await;
    let order = shop::place(&mesh, "rita", &[(chair, 2)], Some(coupon_id)).await;
    assert_eq!(
        (shop::state(&order), order.reason.as_str()),
        (OrderState::Rejected, EXHAUSTED),
        "{order:?}"
    );
    assert!(
        order
            .reason_message
            .starts_with("reserve_stock kept failing for"),
        "{order:?}"
    );
    assert_eq!(
        (order.subtotal, order.discount, order.points_paid),
        (0, 0, 0),
        "never priced, nothing paid: {order:?}"
    );
    let (rejected, undone) = shop::assert_compensated(&mesh, &order.saga_id, EXHAUSTED).await;
    assert_eq!(rejected, "reserve_stock");
    assert_eq!(undone, ["release_stock"]);
    let detail = shop::saga_detail(&mesh, &order.saga_id).await;
    assert!(
        count(
            &detail.log,
            "reserve_stock",
            StepDirection::Forward,
            StepOutcome::Failed
        ) >= 1,
        "retried before giving up: {detail:#?}"
    );
    let s = shop::stock(&mesh, chair).await;
    assert_eq!((s.available, s.reserved, s.sold), (6, 0, 0));
    assert_eq!(shop::balance(&mesh, "rita").await, 50_000);
    assert!(
        shop::ledger_kinds(&mesh, "rita", &order.saga_id)
            .await
            .is_empty()
    );

    // Back up, the coupon service shows the coupon untouched.
    mesh.coupon.start().await;
    let c = shop::coupon_of(&mesh, "rita", coupon_id).await;
    assert_eq!(
        (c.state, c.used_by_saga.as_str()),
        (coupon::UserCouponState::Available as i32, "")
    );
    let charged = HashMap::from([("rita".to_owned(), 50_000)]);
    assert_invariants(&mesh, &[(chair, 6)], &charged).await;
    mesh.shutdown().await;
}

/// A listener that accepts connections and never answers: a call through
/// it hangs until the listener task is aborted, which closes them all.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_writer_that_lost_its_lease_writes_nothing() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Fenced").await;
    let desk = shop::product(&mesh, brand, "Desk", 5_000, 5).await;
    shop::charge(&mesh, "lena", 20_000).await;

    // A second orchestrator whose point-service calls hang (a black hole
    // with a one-minute call deadline) and whose lease lasts a second: its
    // saga's lease expires mid-call, and orchestrator-0's recovery loop
    // (every 200 ms) claims the saga. Its own recovery loop runs only at
    // start, so it never claims the saga back.
    let (hole, hole_task) = black_hole().await;
    let mut stale = harness::orchestrator(
        &mesh,
        "orchestrator-stale",
        &[
            ("--point-addr", &hole),
            ("--lease-ms", "1000"),
            ("--call-timeout-ms", "60000"),
            ("--recovery-interval-ms", "3600000"),
        ],
    );
    stale.start().await;
    let stale_log = stale.log().to_owned();
    mesh.orchestrators.push(stale);

    let key = uuid::Uuid::new_v4().to_string();
    let placed = shop::place_pending(
        &mesh,
        &mesh.orders_at(1),
        shop::request("lena", &[(desk, 1)], None, &key),
    )
    .await;
    let saga_id = placed.saga_id.clone();

    // orchestrator-0 takes the saga over and confirms the order, while the
    // stale instance is still waiting for its call.
    let order = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    assert_eq!(order.points_paid, 5_000);
    let done = shop::assert_forward_once(
        &mesh,
        &saga_id,
        &["reserve_stock", "deduct_points", "confirm_order"],
    )
    .await;
    assert_eq!(
        done.saga.as_ref().unwrap().lease_owner,
        "orchestrator-0",
        "{done:#?}"
    );

    // Its call fails at last; its write is refused (logged with the saga
    // id) and nothing changes.
    hole_task.abort();
    let _ = hole_task.await;
    shop::eventually(&mesh, "the stale instance reporting its lost lease", || {
        let stale_log = stale_log.clone();
        let saga_id = saga_id.clone();
        async move {
            let text = std::fs::read_to_string(&stale_log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("saga lease lost") && l.contains(&saga_id))
                .map(|l| {
                    assert!(l.contains("WARN"), "at WARN: {l}");
                })
        }
    })
    .await;
    assert_eq!(shop::saga_detail(&mesh, &saga_id).await, done);
    let after = SagaAdminServiceClient::new(mesh.orchestrators[1].channel())
        .get_saga(order::SagaRef {
            saga_id: saga_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, done, "the same through the stale instance");
    // Operators see the count on the instance that lost the lease.
    let counts = SagaAdminServiceClient::new(mesh.orchestrators[1].channel())
        .count_sagas(order::CountSagasRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.leases_lost, 1, "{counts:?}");
    assert_eq!(
        shop::order(&mesh, &placed.user_id, &placed.order_id).await,
        order,
        "order unchanged"
    );
    assert_eq!(shop::balance(&mesh, "lena").await, 15_000);
    assert_eq!(
        shop::ledger_kinds(&mesh, "lena", &saga_id).await,
        [point::LedgerKind::Use],
        "one deduction"
    );

    let charged = HashMap::from([("lena".to_owned(), 20_000)]);
    assert_invariants(&mesh, &[(desk, 5)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_rejected_order_pays_nothing() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Unpaid").await;
    let coat = shop::product(&mesh, brand, "Coat", 10_000, 5).await;
    shop::charge(&mesh, "nina", 5_000).await;
    let template = shop::fixed_template(&mesh, 2_000, 0, 10, false).await;
    let coupon_id = shop::issue(&mesh, template, "nina").await;

    // Priced (20,000 less the 2,000 quoted), then refused by the point
    // service: no point taken, no coupon used, so none shown either.
    let order = shop::place(&mesh, "nina", &[(coat, 2)], Some(coupon_id)).await;
    assert_eq!(
        (shop::state(&order), order.reason.as_str()),
        (OrderState::Rejected, "POINT_INSUFFICIENT"),
        "{order:?}"
    );
    assert_eq!(
        (order.subtotal, order.discount, order.points_paid),
        (20_000, 0, 0),
        "{order:?}"
    );
    let listed = shop::only_order_of(&mesh, "nina").await;
    assert_eq!(listed, order);
    // What the saga priced is still in its log.
    let detail = shop::saga_detail(&mesh, &order.saga_id).await;
    let priced = detail
        .log
        .iter()
        .find(|e| e.step_name == "reserve_stock" && e.outcome == StepOutcome::Succeeded as i32)
        .unwrap();
    assert!(
        priced.response_json.contains("\"payable\":18000"),
        "{priced:?}"
    );
    assert_eq!(shop::balance(&mesh, "nina").await, 5_000);
    let c = shop::coupon_of(&mesh, "nina", coupon_id).await;
    assert_eq!(c.state, coupon::UserCouponState::Available as i32);

    let charged = HashMap::from([("nina".to_owned(), 5_000)]);
    assert_invariants(&mesh, &[(coat, 5)], &charged).await;
    mesh.shutdown().await;
}
