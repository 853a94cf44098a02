//! Participants and orchestrators going down: a saga waits out a participant
//! outage (answering PENDING meanwhile), an operator can turn such a saga
//! around, and two orchestrators over one database confirm every order of a
//! burst exactly once while one of them is killed and restarted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_proto::order::v1::{OrderState, StepOutcome};
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::harness::Mesh;
use crate::shop::{self, assert_invariants};

/// Waits until the saga's log holds a FAILED attempt of `step`.
async fn failed_attempt_logged(mesh: &Mesh, saga_id: &str, step: &str) {
    shop::eventually(
        mesh,
        &format!("a FAILED {step} of saga {saga_id}"),
        || async {
            let detail = shop::saga_detail(mesh, saga_id).await;
            detail
                .log
                .iter()
                .any(|e| e.step_name == step && e.outcome == StepOutcome::Failed as i32)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn orders_wait_out_a_point_service_outage_then_confirm() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Patient").await;
    let lamp = shop::product(&mesh, brand, "Lamp", 7_000, 10).await;
    let users: Vec<String> = (0..3).map(|i| format!("waiting-{i}")).collect();
    let mut charged = HashMap::new();
    for user in &users {
        shop::charge(&mesh, user, 30_000).await;
        charged.insert(user.clone(), 30_000);
    }

    mesh.point.kill().await;
    let mut pending = Vec::new();
    for user in &users {
        let key = uuid::Uuid::new_v4().to_string();
        let placed = shop::place_pending(
            &mesh,
            &mesh.orders(),
            shop::request(user, &[(lamp, 2)], None, &key),
        )
        .await;
        assert_eq!(shop::state(&placed), OrderState::Pending, "{placed:?}");
        pending.push(placed);
    }
    // The stock is held while the sagas retry deduct_points.
    for placed in &pending {
        failed_attempt_logged(&mesh, &placed.saga_id, "deduct_points").await;
    }
    let s = shop::stock(&mesh, lamp).await;
    assert_eq!((s.available, s.reserved, s.sold), (4, 6, 0));

    // The orchestrator itself crashing meanwhile changes nothing: the
    // restarted instance takes its sagas up again from their logs.
    mesh.orchestrators[0].restart().await;

    mesh.point.start().await;
    for placed in &pending {
        let order = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;
        assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
        assert_eq!(order.points_paid, 14_000);
        let detail = shop::assert_forward_once(
            &mesh,
            &order.saga_id,
            &["reserve_stock", "deduct_points", "confirm_order"],
        )
        .await;
        let deduct: Vec<&order::StepLogEntry> = detail
            .log
            .iter()
            .filter(|e| e.step_name == "deduct_points")
            .collect();
        let succeeded = deduct
            .iter()
            .position(|e| e.outcome == StepOutcome::Succeeded as i32)
            .unwrap();
        assert!(
            deduct[..succeeded]
                .iter()
                .any(|e| e.outcome == StepOutcome::Failed as i32),
            "FAILED attempts before the success: {deduct:#?}"
        );
        assert!(
            deduct[succeeded + 1..].is_empty(),
            "nothing after the success: {deduct:#?}"
        );
    }
    let s = shop::stock(&mesh, lamp).await;
    assert_eq!((s.available, s.reserved, s.sold), (4, 0, 6));

    assert_invariants(&mesh, &[(lamp, 10)], &charged).await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn operator_compensates_a_saga_waiting_on_a_down_participant() {
    let mut mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Aborted").await;
    let desk = shop::product(&mesh, brand, "Desk", 40_000, 3).await;
    shop::charge(&mesh, "oscar", 100_000).await;

    mesh.point.kill().await;
    let key = uuid::Uuid::new_v4().to_string();
    let placed = shop::place_pending(
        &mesh,
        &mesh.orders(),
        shop::request("oscar", &[(desk, 1)], None, &key),
    )
    .await;
    failed_attempt_logged(&mesh, &placed.saga_id, "deduct_points").await;

    let saga = mesh
        .sagas()
        .compensate_saga(order::SagaRef {
            saga_id: placed.saga_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (saga.state, saga.reason.as_str()),
        (order::SagaState::Compensating as i32, "OPERATOR_ABORTED"),
        "{saga:?}"
    );
    // refund_points must reach the point service (a no-op that blocks any
    // late deduction) before the stock is released.
    mesh.point.start().await;

    let order = shop::settled(&mesh, &placed.user_id, &placed.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Rejected, "{order:?}");
    assert_eq!(order.reason, "OPERATOR_ABORTED", "{order:?}");
    let (rejected, undone) =
        shop::assert_compensated(&mesh, &placed.saga_id, "OPERATOR_ABORTED").await;
    assert_eq!(rejected, "deduct_points");
    assert_eq!(undone, ["refund_points", "release_stock"]);
    let s = shop::stock(&mesh, desk).await;
    assert_eq!((s.available, s.reserved, s.sold), (3, 0, 0));
    assert_eq!(shop::balance(&mesh, "oscar").await, 100_000);

    let finished = order::SagaRef {
        saga_id: placed.saga_id.clone(),
    };
    assert_status(
        mesh.sagas().retry_saga(finished.clone()).await,
        Code::FailedPrecondition,
        "SAGA_FINISHED",
    );
    assert_status(
        mesh.sagas().compensate_saga(finished).await,
        Code::FailedPrecondition,
        "SAGA_FINISHED",
    );

    let charged = HashMap::from([("oscar".to_owned(), 100_000)]);
    assert_invariants(&mesh, &[(desk, 3)], &charged).await;
    mesh.shutdown().await;
}

/// One order of the burst: who, what, with which key, to which instance.
#[derive(Clone)]
struct BurstOrder {
    request: order::PlaceOrderRequest,
    instance: usize,
}

/// Sends the order to its instance, failing over to the other one (same
/// key) while the call fails: a client of a load balancer would. Gives the
/// order answered.
async fn send(clients: [OrderServiceClient<Channel>; 2], burst: BurstOrder) -> order::Order {
    let mut pause = Duration::from_millis(10);
    let mut last = None;
    for attempt in 0..20 {
        let mut client = clients[(burst.instance + attempt) % 2].clone();
        match client.place_order(burst.request.clone()).await {
            Ok(placed) => return placed.into_inner(),
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
    panic!(
        "no instance took {:?}: {last:?}",
        burst.request.idempotency_key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_orchestrators_confirm_a_burst_once_while_one_is_killed() {
    const ORDERS: usize = 60;
    let mut mesh = Mesh::start(2).await;
    let brand = shop::brand(&mesh, "Busy").await;
    let mut products = Vec::new();
    for (i, price) in [1_000, 2_500, 4_000].into_iter().enumerate() {
        products.push(shop::product(&mesh, brand, &format!("Part {i}"), price, 500).await);
    }
    let users: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
    let mut charged = HashMap::new();
    for user in &users {
        shop::charge(&mesh, user, 1_000_000).await;
        charged.insert(user.clone(), 1_000_000);
    }
    let burst: Vec<BurstOrder> = (0..ORDERS)
        .map(|i| {
            let lines = [
                (products[i % 3], 1 + (i as i64 % 3)),
                (products[(i + 1) % 3], 1),
            ];
            BurstOrder {
                request: shop::request(
                    &users[i % users.len()],
                    &lines,
                    None,
                    &uuid::Uuid::new_v4().to_string(),
                ),
                instance: i % 2,
            }
        })
        .collect();
    let clients = [mesh.orders_at(0), mesh.orders_at(1)];
    let answered = Arc::new(AtomicUsize::new(0));
    let spawn = |b: &BurstOrder| {
        let (clients, b, answered) = (clients.clone(), b.clone(), Arc::clone(&answered));
        tokio::spawn(async move {
            let placed = send(clients, b.clone()).await;
            answered.fetch_add(1, Ordering::SeqCst);
            (b, placed)
        })
    };

    let mut tasks: Vec<_> = burst[..ORDERS / 2].iter().map(spawn).collect();
    // Kill -9 orchestrator 1 while it drives sagas of the first half (or,
    // if they all went through already, right after).
    shop::eventually(&mesh, "orchestrator 1 driving a saga", || async {
        let unfinished = mesh
            .sagas()
            .list_sagas(order::ListSagasRequest {
                state: order::SagaState::Unspecified as i32,
                min_age_seconds: 0,
                page: 0,
                size: 100,
            })
            .await
            .unwrap()
            .into_inner()
            .sagas;
        let busy = unfinished.iter().any(|s| s.lease_owner == "orchestrator-1");
        (busy || answered.load(Ordering::SeqCst) == ORDERS / 2).then_some(())
    })
    .await;
    mesh.orchestrators[1].kill().await;
    tasks.extend(burst[ORDERS / 2..].iter().map(spawn));

    let mut placed = Vec::new();
    for task in tasks {
        placed.push(task.await.unwrap());
    }
    mesh.orchestrators[1].start().await;
    // The restarted instance takes orders again.
    let after = BurstOrder {
        request: shop::request(
            &users[0],
            &[(products[0], 1)],
            None,
            &uuid::Uuid::new_v4().to_string(),
        ),
        instance: 1,
    };
    let answer = mesh
        .orders_at(1)
        .place_order(after.request.clone())
        .await
        .unwrap()
        .into_inner();
    placed.push((after, answer));

    let mut units: HashMap<i64, i64> = HashMap::new();
    let mut order_ids = HashSet::new();
    for (b, answer) in &placed {
        let order = shop::settled(&mesh, &answer.user_id, &answer.order_id).await;
        assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
        assert_eq!(order.user_id, b.request.user_id);
        let expected: i64 = order.lines.iter().map(|l| l.line_total).sum();
        assert_eq!(order.points_paid, expected, "{order:?}");
        for line in &b.request.lines {
            *units.entry(line.product_id).or_default() += line.quantity;
        }
        shop::assert_forward_once(
            &mesh,
            &order.saga_id,
            &["reserve_stock", "deduct_points", "confirm_order"],
        )
        .await;
        order_ids.insert(order.order_id);
    }
    // One order per key, and no order without a key that asked for it.
    assert_eq!(order_ids.len(), ORDERS + 1);
    let listed: HashSet<String> = shop::orders_of(&mesh, &users)
        .await
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(listed, order_ids);
    for &product in &products {
        let s = shop::stock(&mesh, product).await;
        assert_eq!(s.sold, units[&product], "product {product}: {s:?}");
    }

    let initial: Vec<(i64, i64)> = products.iter().map(|&p| (p, 500)).collect();
    assert_invariants(&mesh, &initial, &charged).await;
    mesh.shutdown().await;
}
