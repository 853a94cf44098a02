//! Spawning a product server on a fresh database, typed clients, seeding
//! helpers and direct reads of the stored state.

use std::time::Duration;

use commerce_platform::ServerConfig;
use commerce_proto::product::v1 as pb;
use commerce_proto::saga::v1 as saga_pb;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::{TestDatabase, TestServer};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use pb::catalog_service_client::CatalogServiceClient;
use pb::product_admin_service_client::ProductAdminServiceClient;
use pb::stock_service_client::StockServiceClient;
use saga_pb::saga_barrier_service_client::SagaBarrierServiceClient;
use tonic::Status;

/// A running product server on its own database, with a client per service.
pub struct TestApp {
    pub db: TestDatabase,
    pub server: TestServer,
    pub catalog: CatalogServiceClient<Channel>,
    pub admin: ProductAdminServiceClient<Channel>,
    pub stock: StockServiceClient<Channel>,
    pub barrier: SagaBarrierServiceClient<Channel>,
}

/// A product server on a fresh database.
pub async fn spawn() -> TestApp {
    let db = TestDatabase::create("product").await.unwrap();
    let mut config = ServerConfig::for_tests("product", db.url.clone());
    // Many test servers share one database server (151 connections by
    // default): a small pool each. Concurrency tests queue a hundred calls
    // for it on a busy machine, so they may wait longer than the default.
    config.database.max_connections = 6;
    config.database.acquire_timeout = Duration::from_secs(20);
    spawn_with(db, config).await
}

/// A product server on `db` with `config` (e.g. reaching it through a proxy).
pub async fn spawn_with(db: TestDatabase, config: ServerConfig) -> TestApp {
    let app = product_service::build(config).await.unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    TestApp {
        db,
        catalog: CatalogServiceClient::new(channel.clone()),
        admin: ProductAdminServiceClient::new(channel.clone()),
        stock: StockServiceClient::new(channel.clone()),
        barrier: SagaBarrierServiceClient::new(channel),
        server,
    }
}

/// A fresh saga id.
pub fn saga() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn lines(lines: &[(i64, i64)]) -> Vec<pb::ReserveLine> {
    lines
        .iter()
        .map(|&(product_id, quantity)| pb::ReserveLine {
            product_id,
            quantity,
        })
        .collect()
}

impl TestApp {
    pub async fn stop(self) {
        self.server.stop().await.unwrap();
        self.db.drop_database().await.unwrap();
    }

    pub async fn brand(&self, name: &str) -> pb::Brand {
        self.admin
            .clone()
            .create_brand(pb::CreateBrandRequest {
                name: name.to_owned(),
                description: format!("about {name}"),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// An ON_SALE product with `stock` available units.
    pub async fn product(&self, brand_id: i64, name: &str, price: i64, stock: i64) -> pb::Product {
        self.admin
            .clone()
            .create_product(pb::CreateProductRequest {
                brand_id,
                name: name.to_owned(),
                price,
                status: pb::ProductStatus::Unspecified.into(),
                stock,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get_product(&self, product_id: i64) -> pb::Product {
        self.catalog
            .clone()
            .get_product(pb::GetProductRequest { product_id })
            .await
            .unwrap()
            .into_inner()
    }

    /// The product's stock as the API reports it.
    pub async fn stock_of(&self, product_id: i64) -> (i64, i64, i64) {
        let stock = self.get_product(product_id).await.stock.unwrap();
        (stock.available, stock.reserved, stock.sold)
    }

    pub async fn reserve(
        &self,
        saga_id: &str,
        request: &[(i64, i64)],
    ) -> Result<pb::Reservation, Status> {
        self.stock
            .clone()
            .reserve_stock(pb::ReserveStockRequest {
                saga_id: saga_id.to_owned(),
                lines: lines(request),
                saga_fence: 0,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn confirm(&self, saga_id: &str) -> Result<pb::Reservation, Status> {
        self.stock
            .clone()
            .confirm_reservation(saga_request(saga_id))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn release(&self, saga_id: &str) -> Result<pb::ReleaseReservationResponse, Status> {
        self.stock
            .clone()
            .release_reservation(saga_request(saga_id))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn reservation(&self, saga_id: &str) -> Result<pb::Reservation, Status> {
        self.stock
            .clone()
            .get_reservation(saga_request(saga_id))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The barrier rows the server holds for a saga, as `operation:STATE`.
    pub async fn barrier_rows(&self, saga_id: &str) -> Vec<String> {
        let entries = self
            .barrier
            .clone()
            .list_barriers(saga_pb::ListBarriersRequest {
                saga_id: saga_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        entries
            .into_iter()
            .map(|entry| {
                let state = saga_pb::BarrierState::try_from(entry.state).unwrap();
                format!("{}:{}", entry.operation, state.as_str_name())
            })
            .collect()
    }

    /// Runs a `SELECT COUNT(*) AS n ...` directly on the database.
    pub async fn count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.db.connect().await.unwrap();
        diesel::sql_query(sql)
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .n
    }

    /// Rows of the tables every request may write, to show a refused request
    /// changed nothing.
    pub async fn row_counts(&self) -> [i64; 5] {
        [
            self.count("SELECT COUNT(*) AS n FROM brands").await,
            self.count("SELECT COUNT(*) AS n FROM products").await,
            self.count("SELECT COUNT(*) AS n FROM product_likes").await,
            self.count("SELECT COUNT(*) AS n FROM reservations").await,
            self.count("SELECT COUNT(*) AS n FROM saga_barrier").await,
        ]
    }
}

pub fn saga_request(saga_id: &str) -> pb::SagaRequest {
    pb::SagaRequest {
        saga_id: saga_id.to_owned(),
        saga_fence: 0,
    }
}
