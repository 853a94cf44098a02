//! What operators see: reflection through grpcurl, and a database outage
//! that gives UNAVAILABLE and heals by itself.

use commerce_proto::coupon::v1 as pb;
use commerce_testkit::{TestDatabase, assert_status, grpcurl};
use tonic::Code;

use crate::support::{fixed, saga, spawn, spawn_on};

/// grpcurl with `flags` (an identity's certificate) before `args`.
async fn grpcurl_output(flags: &[String], args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(grpcurl())
        .args(flags)
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Runs grpcurl, which must succeed; returns its standard output.
async fn run_grpcurl(flags: &[String], args: &[&str]) -> String {
    let output = grpcurl_output(flags, args).await;
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_the_services_and_calls_them() {
    let app = spawn().await;
    let addr = app.server.addr.to_string();
    let operator = app.server.grpcurl_flags();
    // Quotes are the orchestrator's: grpcurl presents its certificate, and
    // reads the contract from the proto files (reflection is the operator's).
    let mut orchestrator =
        commerce_testkit::grpcurl_flags(app.server.tls_files("orchestrator").as_ref());
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    orchestrator.extend(
        [
            "-import-path",
            protos,
            "-proto",
            "commerce/coupon/v1/coupon.proto",
        ]
        .map(String::from),
    );
    let services = run_grpcurl(&operator, &[&addr, "list"]).await;
    for service in [
        "commerce.coupon.v1.CouponAdminService",
        "commerce.coupon.v1.CouponService",
        "commerce.saga.v1.SagaBarrierService",
    ] {
        assert!(services.lines().any(|line| line == service), "{services}");
    }

    let template = app
        .create_template(pb::CreateTemplateRequest {
            name: "Autumn sale".to_owned(),
            min_order_amount: 5_000,
            ..fixed(1_500)
        })
        .await;
    let body = format!(r#"{{"template_id": {}}}"#, template.id);
    let output = run_grpcurl(
        &operator,
        &[
            "-d",
            &body,
            &addr,
            "commerce.coupon.v1.CouponAdminService/GetTemplate",
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(json["id"], template.id.to_string());
    assert_eq!(json["name"], "Autumn sale");
    assert_eq!(json["kind"], "DISCOUNT_KIND_FIXED");
    assert_eq!(json["value"], "1500");
    assert_eq!(json["minOrderAmount"], "5000");

    let coupon = app.issue(template.id, "alice").await.unwrap();
    let body = format!(
        r#"{{"user_id": "alice", "user_coupon_id": {}, "order_amount": 4000}}"#,
        coupon.id
    );
    let refused = grpcurl_output(
        &orchestrator,
        &[
            "-d",
            &body,
            &addr,
            "commerce.coupon.v1.CouponService/QuoteDiscount",
        ],
    )
    .await;
    // Below the minimum order: grpcurl shows the code and fails.
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("FailedPrecondition"), "{stderr}");
    let body = format!(
        r#"{{"user_id": "alice", "user_coupon_id": {}, "order_amount": 12000}}"#,
        coupon.id
    );
    let output = run_grpcurl(
        &orchestrator,
        &[
            "-d",
            &body,
            &addr,
            "commerce.coupon.v1.CouponService/QuoteDiscount",
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(json["discount"], "1500");
    assert_eq!(json["payable"], "10500");
    app.stop().await;
}

#[tokio::test]
async fn a_database_outage_gives_unavailable_and_the_service_recovers() {
    let db = TestDatabase::create("coupon").await.unwrap();
    let (proxy, url) = db.through_proxy().await.unwrap();
    let app = spawn_on(db, url).await;
    let template = app.create_template(fixed(1_000)).await;

    // Returns once every pooled connection is closed.
    proxy.cut().await;
    let mut admin = app.admin.clone();
    let read = admin
        .get_template(pb::GetTemplateRequest {
            template_id: template.id,
        })
        .await;
    assert_status(read, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert_status(
        app.issue(template.id, "alice").await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    let saga_id = saga();
    assert_status(
        app.restore(&saga_id).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );

    proxy.restore();
    // The pool reconnects on demand; allow a few calls for stale connections.
    let mut recovered = None;
    for _ in 0..20 {
        match app.issue(template.id, "alice").await {
            Ok(coupon) => {
                recovered = Some(coupon);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    let coupon = recovered.expect("the service recovers once the database is back");
    assert_eq!(coupon.user_id, "alice");
    // Nothing was half-applied during the outage.
    assert_eq!(app.get_template(template.id).await.issued_quantity, 1);
    assert!(!app.restore(&saga_id).await.unwrap().restored);
    app.stop().await;
}
