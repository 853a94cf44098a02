//! Metrics: a server asked for them serves `/metrics` on a port of its own,
//! with every gRPC answer counted by service, method and code (whether the
//! status came in the headers or the trailers, or the caller went away),
//! the pool's state and the process's own figures.

use std::time::Duration;

use commerce_platform::{Application, ServerConfig, ServiceSpec, migrate};
use commerce_proto::saga::v1::ListBarriersRequest;
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use commerce_testkit::metrics::{Exposition, scrape};
use commerce_testkit::{TestDatabase, TestServer};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const SPEC: ServiceSpec = ServiceSpec {
    name: "bare",
    default_listen: "127.0.0.1:0",
    default_database_url: "",
    migrations: &migrate::BARRIER_MIGRATIONS,
    saga_participant: true,
};

const BARRIERS: &str = "commerce.saga.v1.SagaBarrierService";

/// Scrapes until `done` holds of the metrics (bounded: 10 s).
async fn scrape_until(
    addr: std::net::SocketAddr,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(addr).await.unwrap();
        if done(&metrics) || tokio::time::Instant::now() >= deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_pool_and_process_are_measured() {
    let db = TestDatabase::create("bare").await.unwrap();
    let mut config = ServerConfig::for_tests("bare", db.url.clone());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = Application::build(&SPEC, config)
        .await
        .unwrap()
        .with_policy(commerce_platform::tls::policy::POINT);
    let metrics_addr = app.metrics_addr().expect("metrics are served");
    let server = TestServer::start(app);
    // Other tests of this process may share the recorder: count from here.
    let before = scrape(metrics_addr).await.unwrap();
    let requests = |m: &Exposition, method: &str, code: &str| {
        m.sum(
            "commerce_grpc_server_requests_total",
            &[("service", BARRIERS), ("method", method), ("code", code)],
        )
    };

    let mut admin = SagaBarrierServiceClient::new(server.channel());
    // OK: the status comes in the trailers.
    admin
        .list_barriers(ListBarriersRequest {
            saga_id: "0b6f7d1c-3a2e-4b5f-8c9d-0e1f2a3b4c5d".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Refused: a trailers-only answer, the status in the headers.
    for _ in 0..2 {
        admin
            .list_barriers(ListBarriersRequest {
                saga_id: "nope".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_err();
    }
    // A stream the caller drops before its end.
    let mut health = HealthClient::new(server.channel());
    let watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    drop(watch);

    let after = scrape_until(metrics_addr, |m| {
        m.sum(
            "commerce_grpc_server_requests_total",
            &[("method", "Watch"), ("code", "CANCELLED")],
        ) > before.sum(
            "commerce_grpc_server_requests_total",
            &[("method", "Watch"), ("code", "CANCELLED")],
        )
    })
    .await;
    assert_eq!(
        requests(&after, "ListBarriers", "OK") - requests(&before, "ListBarriers", "OK"),
        1.0
    );
    assert_eq!(
        requests(&after, "ListBarriers", "INVALID_ARGUMENT")
            - requests(&before, "ListBarriers", "INVALID_ARGUMENT"),
        2.0
    );
    assert!(
        after.sum(
            "commerce_grpc_server_requests_total",
            &[
                ("service", "grpc.health.v1.Health"),
                ("method", "Watch"),
                ("code", "CANCELLED")
            ],
        ) >= 1.0,
        "a dropped stream counts as CANCELLED"
    );
    let timed = |m: &Exposition| {
        m.sum(
            "commerce_grpc_server_request_duration_seconds_count",
            &[("service", BARRIERS), ("method", "ListBarriers")],
        )
    };
    assert_eq!(timed(&after) - timed(&before), 3.0);
    assert!(
        after.sum(
            "commerce_grpc_server_request_duration_seconds_bucket",
            &[("method", "ListBarriers"), ("le", "+Inf")],
        ) >= 3.0
    );

    // The pool: its bound, connections made for the calls above, and the
    // waits for them.
    assert_eq!(after.sum("commerce_db_pool_max_connections", &[]), 6.0);
    assert!(after.sum("commerce_db_pool_connections", &[]) >= 1.0);
    assert!(after.sum("commerce_db_pool_acquires_total", &[]) >= 1.0);
    assert!(after.sum("commerce_db_pool_wait_seconds_count", &[]) >= 1.0);
    // The process.
    assert!(after.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.names().contains("process_cpu_seconds_total"));

    server.stop().await.unwrap();
    db.drop_database().await.unwrap();
}
