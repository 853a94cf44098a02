//! What operators rely on: reflection for grpcurl, and recovery from a
//! database outage.

use std::process::Command;

use commerce_proto::point::v1 as pb;
use commerce_testkit::{TestDatabase, assert_status, grpcurl};
use tonic::Code;

use crate::{charge_request, deduct_request, new_saga, spawn, spawn_on};

#[tokio::test]
async fn grpcurl_lists_the_services_and_reads_a_balance() {
    let app = spawn().await;
    app.charge("alice", 1_500, "top-up").await;
    let addr = app.server.addr.to_string();

    let flags = app.server.grpcurl_flags();
    let list = tokio::task::spawn_blocking({
        let (addr, flags) = (addr.clone(), flags.clone());
        move || {
            Command::new(grpcurl())
                .args(flags)
                .args([&addr, "list"])
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let services = String::from_utf8(list.stdout).unwrap();
    for service in [
        "commerce.point.v1.PointService",
        "commerce.saga.v1.SagaBarrierService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} in {services}"
        );
    }

    let call = tokio::task::spawn_blocking(move || {
        Command::new(grpcurl())
            .args(flags)
            .args([
                "-d",
                r#"{"user_id": "alice"}"#,
                &addr,
                "commerce.point.v1.PointService/GetBalance",
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&call.stdout).unwrap();
    // int64 travels as a JSON string.
    assert_eq!(json["userId"], "alice");
    assert_eq!(json["balance"], "1500");
    app.finish().await;
}

#[tokio::test]
async fn database_outage_gives_unavailable_and_the_service_recovers() {
    let db = TestDatabase::create("point").await.unwrap();
    let (proxy, proxied_url) = db.through_proxy().await.unwrap();
    let app = spawn_on(db.clone(), proxied_url).await;
    app.charge("alice", 1_000, "before").await;

    proxy.cut().await;
    let mut points = app.points.clone();
    let read = points
        .get_balance(pb::GetBalanceRequest {
            user_id: "alice".to_owned(),
        })
        .await;
    assert_status(read, Code::Unavailable, "DATABASE_UNAVAILABLE");
    let charge = points.charge(charge_request("alice", 10, "during")).await;
    assert_status(charge, Code::Unavailable, "DATABASE_UNAVAILABLE");
    let deduct = points
        .deduct_points(deduct_request(&new_saga(), "alice", 10))
        .await;
    assert_status(deduct, Code::Unavailable, "DATABASE_UNAVAILABLE");

    proxy.restore();
    assert_eq!(app.balance("alice").await, 1_000);
    assert_eq!(app.charge("alice", 10, "after").await.balance, 1_010);
    app.assert_consistent("alice").await;
    app.finish().await;
}
