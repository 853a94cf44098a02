//! One order, one trace: the mesh exports its spans over OTLP to a
//! collector the test runs, and the spans of all four servers share the
//! caller's trace and nest as the saga ran (the caller, PlaceOrder, the
//! saga, each step, the participant's request, its database time). A saga
//! resumed after the orchestrator crashed goes on in the trace it started
//! in. Log lines (JSON) carry the trace id and the saga id.

use std::collections::HashMap;

use commerce_proto::order::v1::OrderState;

use crate::collector::{Collector, Received, caller, confirmed_in_a_trace, with_trace};
use crate::harness::{Mesh, SERVERS};
use crate::shop::{self, FORWARD};

/// Whether `span`'s parent chain (as far as it was received) reaches span
/// `ancestor`.
fn descends_from(by_id: &HashMap<String, &Received>, span: &Received, ancestor: &str) -> bool {
    let mut parent = span.parent_id();
    while let Some(next) = by_id.get(&parent) {
        if parent == ancestor {
            return true;
        }
        parent = next.parent_id();
    }
    parent == ancestor
}

/// The step spans of a trace by step name (each step once, unless
/// retried).
fn steps(spans: &[Received]) -> HashMap<String, Vec<&Received>> {
    let mut steps: HashMap<String, Vec<&Received>> = HashMap::new();
    for span in spans.iter().filter(|s| s.attribute("direction").is_some()) {
        steps
            .entry(span.attribute("step").unwrap())
            .or_default()
            .push(span);
    }
    steps
}

/// The participants' server spans (a request's span, not the saga's).
fn participant_requests(spans: &[Received]) -> Vec<&Received> {
    spans
        .iter()
        .filter(|s| s.service != "orchestrator" && s.attribute("rpc.system").is_some())
        .collect()
}

/// The database spans under participant request `call`.
fn database_time<'a>(spans: &'a [Received], call: &Received) -> Vec<&'a Received> {
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();
    spans
        .iter()
        .filter(|s| s.attribute("db.system.name").is_some())
        .filter(|s| descends_from(&by_id, s, &call.id()))
        .collect()
}

/// Every step of `names` has a span from the orchestrator, and each
/// participant request's span descendants holding its database time.
fn has_steps_and_their_calls(spans: &[Received], names: &[&str]) -> bool {
    let steps = steps(spans);
    let calls = participant_requests(spans);
    names.iter().all(|n| steps.contains_key(*n))
        && calls.len() >= names.len()
        && calls
            .iter()
            .all(|call| !database_time(spans, call).is_empty())
}

#[tokio::test]
async fn one_order_is_one_trace_across_the_mesh() {
    let collector = Collector::start().await;
    let mesh = Mesh::start_with(1, &collector.env()).await;
    let (item, coupon_id) = shop::item_and_coupon(&mesh, "tracy").await;

    let (trace_id, caller_span, order) =
        confirmed_in_a_trace(&mesh, "tracy", &[(item, 2)], Some(coupon_id)).await;

    let spans = collector
        .trace(&trace_id, |spans| {
            SERVERS
                .iter()
                .all(|server| spans.iter().any(|s| s.service == *server))
                && has_steps_and_their_calls(spans, &FORWARD)
        })
        .await;
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();

    // The orchestrator's request continues the caller's span...
    let place_order = spans
        .iter()
        .find(|s| s.name() == "commerce.order.v1.OrderService/PlaceOrder")
        .expect("the PlaceOrder request's span");
    assert_eq!(place_order.service, "orchestrator");
    assert_eq!(place_order.parent_id(), caller_span);
    // ...the saga is its child...
    let saga = spans
        .iter()
        .find(|s| s.attribute("saga.kind").is_some())
        .expect("the saga's span");
    assert!(
        descends_from(&by_id, saga, &place_order.id()),
        "the saga runs in the PlaceOrder request"
    );
    assert_eq!(
        saga.attribute("saga_id").as_deref(),
        Some(order.saga_id.as_str())
    );
    // ...each step the saga's, with its saga, direction, attempt and outcome...
    let steps = steps(&spans);
    for name in FORWARD {
        let step = &steps[name];
        assert_eq!(step.len(), 1, "{name} ran once: {step:?}");
        let step = step[0];
        assert_eq!(step.service, "orchestrator");
        assert_eq!(step.parent_id(), saga.id(), "{name}");
        assert_eq!(
            (
                step.attribute("saga_id").as_deref(),
                step.attribute("direction").as_deref(),
                step.attribute("attempt").as_deref(),
                step.attribute("outcome").as_deref(),
            ),
            (
                Some(order.saga_id.as_str()),
                Some("FORWARD"),
                Some("1"),
                Some("SUCCEEDED")
            ),
            "{name}"
        );
    }
    // ...and each participant's request a child of the step that called it,
    // its database time a child of the request.
    let called_by = |call: &Received| -> String {
        by_id
            .get(&call.parent_id())
            .and_then(|step| step.attribute("step"))
            .unwrap_or_else(|| panic!("{} has no step for parent", call.name()))
    };
    for (method, service, step) in [
        (
            "commerce.product.v1.StockService/ReserveStock",
            "product",
            "reserve_stock",
        ),
        (
            "commerce.point.v1.PointService/DeductPoints",
            "point",
            "deduct_points",
        ),
        (
            "commerce.coupon.v1.CouponService/UseCoupon",
            "coupon",
            "use_coupon",
        ),
        (
            "commerce.product.v1.StockService/ConfirmReservation",
            "product",
            "confirm_order",
        ),
    ] {
        let call = spans
            .iter()
            .find(|s| s.name() == method)
            .unwrap_or_else(|| panic!("no span of {method}"));
        assert_eq!(call.service, service, "{method}");
        assert_eq!(called_by(call), step, "{method}");
        let database = database_time(&spans, call);
        assert!(!database.is_empty(), "no database span under {method}");
        assert!(database.iter().all(|d| d.service == service), "{method}");
    }
    for call in participant_requests(&spans) {
        called_by(call);
    }

    // The orchestrator's log lines in the saga carry both ids.
    let log = std::fs::read_to_string(mesh.orchestrator().log()).unwrap();
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "saga finished" && l["saga_id"] == order.saga_id.as_str())
        .unwrap_or_else(|| panic!("no JSON 'saga finished' line for the saga in:\n{log}"));
    assert_eq!(finished["trace_id"], trace_id.as_str(), "{finished}");

    mesh.shutdown().await;
}

#[tokio::test]
async fn a_saga_resumed_after_a_crash_goes_on_in_its_trace() {
    let collector = Collector::start().await;
    let env = collector.env();
    let mut mesh = Mesh::start_with(1, &env).await;
    let (item, coupon_id) = shop::item_and_coupon(&mesh, "resumed").await;

    // The orchestrator aborts right after deducting the points.
    let node = &mut mesh.orchestrators[0];
    node.kill().await;
    let mut armed = env.clone();
    armed.push(("ORCHESTRATOR_CRASH_AT", "after:deduct_points"));
    node.start_with(&armed).await;
    let (trace_id, _, traceparent) = caller();
    let key = uuid::Uuid::new_v4().to_string();
    let request = shop::request("resumed", &[(item, 1)], Some(coupon_id), &key);
    let call = mesh
        .orders()
        .place_order(with_trace(request, &traceparent))
        .await;
    assert!(call.is_err(), "the armed orchestrator answered {call:?}");
    let node = &mut mesh.orchestrators[0];
    assert!(!node.wait_exit().await.success());
    // Restarted, it resumes its own saga at once.
    node.start_with(&env).await;
    let order = shop::only_order_of(&mesh, "resumed").await;
    let order = shop::settled(&mesh, "resumed", &order.order_id).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");

    // The steps after the crash ran in the trace the order was placed in.
    let spans = collector
        .trace(&trace_id, |spans| {
            has_steps_and_their_calls(spans, &["use_coupon", "confirm_order"])
        })
        .await;
    let by_id: HashMap<String, &Received> = spans.iter().map(|s| (s.id(), s)).collect();
    let steps = steps(&spans);
    for name in ["use_coupon", "confirm_order"] {
        let step = steps[name][0];
        assert_eq!(
            step.attribute("saga_id").as_deref(),
            Some(order.saga_id.as_str())
        );
        let saga = by_id
            .get(&step.parent_id())
            .unwrap_or_else(|| panic!("{name}: no saga span for parent"));
        assert_eq!(saga.attribute("saga.kind").as_deref(), Some("PLACE_ORDER"));
        // The resumed drive continues the PlaceOrder request it started in
        // (whose span died with the first process).
        assert!(!saga.parent_id().is_empty(), "{name}: a root saga span");
    }
    // The product's ReserveStock (before the crash) is in the same trace.
    assert!(
        spans
            .iter()
            .any(|s| s.name() == "commerce.product.v1.StockService/ReserveStock"),
        "the steps before the crash are in the trace too"
    );

    mesh.shutdown().await;
}
