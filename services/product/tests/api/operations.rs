//! What operators see: a database outage and its recovery, and the services
//! over reflection with grpcurl.

use commerce_proto::product::v1 as pb;
use commerce_testkit::{TestDatabase, assert_status, grpcurl};
use tonic::Code;

use commerce_platform::ServerConfig;

use crate::support::{saga, spawn, spawn_with};

#[tokio::test]
async fn database_outage_gives_unavailable_and_the_service_recovers() {
    let db = TestDatabase::create("product").await.unwrap();
    let (proxy, proxied_url) = db.through_proxy().await.unwrap();
    // The default short acquire timeout: calls fail fast while it is down.
    let app = spawn_with(db, ServerConfig::for_tests("product", proxied_url)).await;
    let brand = app.brand("Acme").await;
    let product = app.product(brand.id, "Boots", 30_000, 10).await;

    proxy.cut().await;
    let saga_id = saga();
    assert_status(
        app.reserve(&saga_id, &[(product.id, 2)]).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert_status(
        app.catalog
            .clone()
            .get_product(pb::GetProductRequest {
                product_id: product.id,
            })
            .await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );

    proxy.restore();
    // The pool replaces its dead connections on demand: a bounded number of
    // calls, no sleeping.
    let mut recovered = None;
    for _ in 0..20 {
        if let Ok(response) = app
            .catalog
            .clone()
            .get_product(pb::GetProductRequest {
                product_id: product.id,
            })
            .await
        {
            recovered = Some(response.into_inner());
            break;
        }
    }
    let recovered = recovered.expect("the service recovers once the database is back");
    // The refused reserve changed nothing, and was not recorded either.
    assert_eq!(recovered.stock.unwrap().available, 10);
    assert!(app.barrier_rows(&saga_id).await.is_empty());
    let reservation = app.reserve(&saga_id, &[(product.id, 2)]).await.unwrap();
    assert_eq!(reservation.lines[0].quantity, 2);
    assert_eq!(app.stock_of(product.id).await, (8, 2, 0));
    app.stop().await;
}

#[tokio::test]
async fn grpcurl_lists_the_services_and_calls_one() {
    let app = spawn().await;
    let addr = app.server.addr.to_string();

    let listed = tokio::process::Command::new(grpcurl())
        .args(app.server.grpcurl_flags())
        .args([&addr, "list"])
        .output()
        .await
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let services = String::from_utf8(listed.stdout).unwrap();
    for service in [
        "commerce.product.v1.CatalogService",
        "commerce.product.v1.ProductAdminService",
        "commerce.product.v1.StockService",
        "commerce.saga.v1.SagaBarrierService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} missing: {services}"
        );
    }

    let created = tokio::process::Command::new(grpcurl())
        .args(app.server.grpcurl_flags())
        .args([
            "-d",
            r#"{"name": "Acme", "description": "made with grpcurl"}"#,
            &addr,
            "commerce.product.v1.ProductAdminService/CreateBrand",
        ])
        .output()
        .await
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let brand: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(brand["name"], "Acme");
    assert_eq!(brand["description"], "made with grpcurl");
    // int64 travels as a JSON string.
    let id: i64 = brand["id"].as_str().unwrap().parse().unwrap();
    let stored = app
        .catalog
        .clone()
        .get_brand(pb::GetBrandRequest { brand_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.name, "Acme");
    app.stop().await;
}
