//! CouponAdminService: creating and reading templates, and refusing invalid
//! ones with the offending field named and nothing stored.

use chrono::{Duration, Utc};
use commerce_proto::coupon::v1 as pb;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::support::{fixed, percent, spawn, timestamp};

#[tokio::test]
async fn templates_are_created_and_read_back() {
    let app = spawn().await;
    let request = pb::CreateTemplateRequest {
        name: "  Welcome gift  ".to_owned(),
        min_order_amount: 20_000,
        total_quantity: 500,
        ..fixed(3_000)
    };
    let created = app.create_template(request.clone()).await;
    assert!(created.id > 0);
    assert_eq!(created.name, "Welcome gift");
    assert_eq!(created.kind, i32::from(pb::DiscountKind::Fixed));
    assert_eq!(created.value, 3_000);
    assert_eq!(created.max_discount, None);
    assert_eq!(created.min_order_amount, 20_000);
    assert_eq!(created.total_quantity, 500);
    assert_eq!(created.issued_quantity, 0);
    // Stored at microsecond precision.
    let from = request.valid_from.unwrap();
    let stored_from = created.valid_from.unwrap();
    assert_eq!(stored_from.seconds, from.seconds);
    assert_eq!(stored_from.nanos, from.nanos / 1_000 * 1_000);
    assert!(created.created_at.is_some());
    assert_eq!(app.get_template(created.id).await, created);

    let capped = app.create_template(percent(15, Some(5_000))).await;
    assert_eq!(capped.kind, i32::from(pb::DiscountKind::Percent));
    assert_eq!(capped.value, 15);
    assert_eq!(capped.max_discount, Some(5_000));
    assert_eq!(app.get_template(capped.id).await, capped);
    let uncapped = app.create_template(percent(100, None)).await;
    assert_eq!(uncapped.max_discount, None);

    let mut admin = app.admin.clone();
    assert_status(
        admin
            .get_template(pb::GetTemplateRequest { template_id: 9_999 })
            .await,
        Code::NotFound,
        "COUPON_TEMPLATE_NOT_FOUND",
    );
    for template_id in [0, -1] {
        assert_status(
            admin
                .get_template(pb::GetTemplateRequest { template_id })
                .await,
            Code::InvalidArgument,
            "template_id",
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_templates_are_refused_naming_the_field() {
    let app = spawn().await;
    let now = Utc::now();
    let cases: Vec<(pb::CreateTemplateRequest, &str)> = vec![
        (
            pb::CreateTemplateRequest {
                name: String::new(),
                ..fixed(1_000)
            },
            "name",
        ),
        (
            pb::CreateTemplateRequest {
                name: "   ".to_owned(),
                ..fixed(1_000)
            },
            "name",
        ),
        (
            pb::CreateTemplateRequest {
                name: "x".repeat(101),
                ..fixed(1_000)
            },
            "name",
        ),
        (
            pb::CreateTemplateRequest {
                name: "a\u{7}b".to_owned(),
                ..fixed(1_000)
            },
            "name",
        ),
        (
            pb::CreateTemplateRequest {
                kind: 0,
                ..fixed(1_000)
            },
            "kind",
        ),
        (
            pb::CreateTemplateRequest {
                kind: 42,
                ..fixed(1_000)
            },
            "kind",
        ),
        (fixed(0), "value"),
        (fixed(-5), "value"),
        (fixed(100_000_001), "value"),
        (percent(0, None), "value"),
        (percent(101, None), "value"),
        (percent(10, Some(0)), "max_discount"),
        (percent(10, Some(-1)), "max_discount"),
        (
            pb::CreateTemplateRequest {
                max_discount: Some(100),
                ..fixed(1_000)
            },
            "max_discount",
        ),
        (
            pb::CreateTemplateRequest {
                min_order_amount: -1,
                ..fixed(1_000)
            },
            "min_order_amount",
        ),
        (
            pb::CreateTemplateRequest {
                valid_from: None,
                ..fixed(1_000)
            },
            "valid_from",
        ),
        (
            pb::CreateTemplateRequest {
                valid_until: None,
                ..fixed(1_000)
            },
            "valid_until",
        ),
        (
            pb::CreateTemplateRequest {
                valid_from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..fixed(1_000)
            },
            "valid_from",
        ),
        (
            pb::CreateTemplateRequest {
                valid_until: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..fixed(1_000)
            },
            "valid_until",
        ),
        (
            pb::CreateTemplateRequest {
                valid_from: timestamp(now),
                valid_until: timestamp(now),
                ..fixed(1_000)
            },
            "valid_until",
        ),
        (
            pb::CreateTemplateRequest {
                valid_from: timestamp(now),
                valid_until: timestamp(now - Duration::seconds(1)),
                ..fixed(1_000)
            },
            "valid_until",
        ),
        (
            pb::CreateTemplateRequest {
                total_quantity: 0,
                ..fixed(1_000)
            },
            "total_quantity",
        ),
        (
            pb::CreateTemplateRequest {
                total_quantity: -3,
                ..fixed(1_000)
            },
            "total_quantity",
        ),
        (
            pb::CreateTemplateRequest {
                total_quantity: 10_000_001,
                ..fixed(1_000)
            },
            "total_quantity",
        ),
    ];
    let mut admin = app.admin.clone();
    for (request, field) in cases {
        assert_status(
            admin.create_template(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM coupon_templates")
            .await,
        0
    );

    // The limits themselves are accepted.
    let widest = app
        .create_template(pb::CreateTemplateRequest {
            name: "x".repeat(100),
            total_quantity: 10_000_000,
            ..fixed(100_000_000)
        })
        .await;
    assert_eq!(widest.value, 100_000_000);
    app.create_template(percent(1, Some(1))).await;
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM coupon_templates")
            .await,
        2
    );
    app.stop().await;
}
