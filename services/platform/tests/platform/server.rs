//! Server bootstrap: health follows the database, reflection is served, the
//! barrier admin RPCs work, shutdown drains.

use commerce_platform::{Application, ServerConfig, ServiceSpec, migrate};
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use commerce_proto::saga::v1::{ListBarriersRequest, PurgeBarriersRequest};
use commerce_testkit::{TestDatabase, TestServer, assert_status};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A participant with no tables of its own beyond the barrier.
const SPEC: ServiceSpec = ServiceSpec {
    name: "bare",
    default_listen: "127.0.0.1:0",
    default_database_url: "",
    migrations: &migrate::BARRIER_MIGRATIONS,
    saga_participant: true,
};

/// A participant's policy table (health, reflection and barrier admin are
/// all the bare server serves).
const PARTICIPANT: &[commerce_platform::tls::Rule] = commerce_platform::tls::policy::POINT;

/// Waits, through the health Watch stream, until `service` reports `want`.
async fn await_health(server: &TestServer, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(server.channel());
    let mut updates = health
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(update) = updates.message().await.unwrap() {
        if update.status == want as i32 {
            return;
        }
    }
    panic!("health stream of {service:?} ended before {want:?}");
}

#[tokio::test]
async fn health_reflection_and_barrier_admin_are_served() {
    let db = TestDatabase::create("bare").await.unwrap();
    let app = Application::build(&SPEC, ServerConfig::for_tests("bare", db.url.clone()))
        .await
        .unwrap()
        .with_policy(PARTICIPANT);
    let server = TestServer::start(app);

    await_health(&server, "", ServingStatus::Serving).await;
    await_health(
        &server,
        "commerce.saga.v1.SagaBarrierService",
        ServingStatus::Serving,
    )
    .await;

    let mut admin = SagaBarrierServiceClient::new(server.channel());
    let empty = admin
        .list_barriers(ListBarriersRequest {
            saga_id: "0b6f7d1c-3a2e-4b5f-8c9d-0e1f2a3b4c5d".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.entries.is_empty());
    assert_status(
        admin
            .list_barriers(ListBarriersRequest {
                saga_id: "nope".to_owned(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "saga_id",
    );
    assert_status(
        admin
            .purge_barriers(PurgeBarriersRequest {
                older_than_seconds: 0,
                limit: 0,
            })
            .await,
        Code::InvalidArgument,
        "older_than_seconds",
    );
    // Rows young enough to still stop a late saga call are never purged,
    // and nonsense ages are the caller's error, not the server's.
    for older_than_seconds in [1, 3600, 86_399, -5, i64::MAX, 10_000_000_000_000] {
        assert_status(
            admin
                .purge_barriers(PurgeBarriersRequest {
                    older_than_seconds,
                    limit: 10,
                })
                .await,
            Code::InvalidArgument,
            "older_than_seconds",
        );
    }
    let purged = admin
        .purge_barriers(PurgeBarriersRequest {
            older_than_seconds: 86_400,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.purged, 0);

    server.stop().await.unwrap();
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_away() {
    let db = TestDatabase::create("health").await.unwrap();
    let (proxy, url) = db.through_proxy().await.unwrap();
    let app = Application::build(&SPEC, ServerConfig::for_tests("bare", url))
        .await
        .unwrap()
        .with_policy(PARTICIPANT);
    let server = TestServer::start(app);
    await_health(&server, "", ServingStatus::Serving).await;

    proxy.cut().await;
    await_health(&server, "", ServingStatus::NotServing).await;
    await_health(
        &server,
        "commerce.saga.v1.SagaBarrierService",
        ServingStatus::NotServing,
    )
    .await;
    // A call that needs the database fails UNAVAILABLE, not INTERNAL.
    let mut admin = SagaBarrierServiceClient::new(server.channel());
    let refused = admin
        .list_barriers(ListBarriersRequest {
            saga_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    proxy.restore();
    await_health(&server, "", ServingStatus::Serving).await;
    admin
        .list_barriers(ListBarriersRequest {
            saga_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap();

    server.stop().await.unwrap();
    drop(proxy);
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn unreachable_database_at_start_fails_clearly() {
    let mut config = ServerConfig::for_tests("bare", "mysql://commerce:commerce@127.0.0.1:1/none");
    config.db_startup_wait = std::time::Duration::ZERO;
    let error = Application::build(&SPEC, config).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("connecting to the database"),
        "{error:#}"
    );
}
