//! Reconciliation over the real mesh: settled orders (confirmed with a
//! coupon, rejected, cancelled) agree with what the participants hold; then
//! each participant's database is tampered with the way drift would look
//! (a confirmed order's reservation released, a cancelled order's refund
//! lost, a barrier row of a saga nobody ran) and `Reconcile`, over gRPC and
//! through the BFF, reports exactly those, with their evidence.

use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::OrderState;
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::bff::{Bff, http};
use crate::harness::Mesh;
use crate::shop;

async fn reconcile(mesh: &Mesh) -> order::ReconcileReport {
    mesh.sagas()
        .reconcile(order::ReconcileRequest {
            window_seconds: 3600,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn execute(mesh: &Mesh, service: &str, sql: &str) {
    let mut conn = mesh.database(service).connect().await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn drift_between_log_and_participants_is_reported_with_evidence() {
    let mesh = Mesh::start(1).await;
    let brand = shop::brand(&mesh, "Drift").await;
    let lamp = shop::product(&mesh, brand, "Lamp", 10_000, 10).await;
    shop::charge(&mesh, "rita", 25_000).await;
    let template = shop::fixed_template(&mesh, 1_000, 5_000, 10, false).await;
    let coupon = shop::issue(&mesh, template, "rita").await;

    let kept = shop::place(&mesh, "rita", &[(lamp, 1)], Some(coupon)).await;
    assert_eq!(shop::state(&kept), OrderState::Confirmed, "{kept:?}");
    // 9,000 + 20,000 is more than rita has left: refused at the points.
    let refused = shop::place(&mesh, "rita", &[(lamp, 2)], None).await;
    assert_eq!(shop::state(&refused), OrderState::Rejected, "{refused:?}");
    let gone = shop::place(&mesh, "rita", &[(lamp, 1)], None).await;
    mesh.orders()
        .cancel_order(order::CancelOrderRequest {
            order_id: gone.order_id.clone(),
            user_id: "rita".into(),
        })
        .await
        .unwrap();
    let gone = shop::settled(&mesh, "rita", &gone.order_id).await;
    assert_eq!(shop::state(&gone), OrderState::Cancelled, "{gone:?}");

    let clean = reconcile(&mesh).await;
    assert_eq!(clean.orders_checked, 3, "{clean:#?}");
    assert!(clean.barriers_checked >= 8, "{clean:#?}");
    assert_eq!(clean.drifts, [], "{clean:#?}");

    // Drift, as lost writes or a stray hand would leave it.
    execute(
        &mesh,
        "product",
        &format!(
            "UPDATE reservations SET state = 'RELEASED' WHERE saga_id = '{}'",
            kept.saga_id
        ),
    )
    .await;
    execute(
        &mesh,
        "point",
        &format!(
            "DELETE FROM saga_barrier WHERE saga_id = '{}' AND operation = 'refund_points'",
            gone.saga_id
        ),
    )
    .await;
    let stranger = uuid::Uuid::new_v4().to_string();
    execute(&mesh, "coupon", &format!(
        "INSERT INTO saga_barrier (saga_id, operation, state, fence, response_json, created_at) \
         VALUES ('{stranger}', 'use_coupon', 'APPLIED', 1, NULL, UTC_TIMESTAMP(6))")).await;

    let report = reconcile(&mesh).await;
    let mut found: Vec<(&str, &str, &str)> = report
        .drifts
        .iter()
        .map(|d| (d.kind.as_str(), d.participant.as_str(), d.saga_id.as_str()))
        .collect();
    found.sort();
    let mut expected = vec![
        ("EFFECT_LEFT_BEHIND", "point", gone.saga_id.as_str()),
        ("ORPHAN_BARRIER", "coupon", stranger.as_str()),
        ("RESERVATION_MISMATCH", "product", kept.saga_id.as_str()),
    ];
    expected.sort();
    assert_eq!(found, expected, "{report:#?}");
    for drift in &report.drifts {
        let evidence: serde_json::Value = serde_json::from_str(&drift.evidence_json).unwrap();
        assert!(evidence.is_object(), "{drift:#?}");
        assert!(!drift.detail.is_empty(), "{drift:#?}");
    }
    let mismatch = report
        .drifts
        .iter()
        .find(|d| d.kind == "RESERVATION_MISMATCH")
        .unwrap();
    assert_eq!(mismatch.order_id, kept.order_id);
    let evidence: serde_json::Value = serde_json::from_str(&mismatch.evidence_json).unwrap();
    assert_eq!(
        evidence["holdings"]["reservation"], "released",
        "{evidence:#}"
    );
    assert_eq!(evidence["order"]["state"], "CONFIRMED", "{evidence:#}");

    // The same report for operators through the BFF; shoppers may not ask.
    let bff = Bff::start(&mesh).await;
    let answer = http()
        .post(bff.at("/api/v1/admin/reconcile"))
        .bearer_auth(bff.operator_token())
        .json(&json!({"windowSeconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["ordersChecked"], 3, "{body:#}");
    assert_eq!(body["drifts"].as_array().unwrap().len(), 3, "{body:#}");
    let refused_to_shopper = http()
        .post(bff.at("/api/v1/admin/reconcile"))
        .bearer_auth(bff.token("rita"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused_to_shopper.status(), 403);
    bff.stop().await;

    mesh.shutdown().await;
}
