//! What every test needs: a server on its own database, clients, template
//! requests with validity windows in the past, present or future, and direct
//! reads of stored state.

use chrono::{Duration, Utc};
use commerce_platform::ServerConfig;
use commerce_proto::coupon::v1 as pb;
use commerce_proto::coupon::v1::coupon_admin_service_client::CouponAdminServiceClient;
use commerce_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::{TestDatabase, TestServer};
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

pub struct TestApp {
    pub db: TestDatabase,
    pub server: TestServer,
    pub admin: CouponAdminServiceClient<Channel>,
    pub coupons: CouponServiceClient<Channel>,
}

/// A coupon server on a fresh database of its own.
pub async fn spawn() -> TestApp {
    let db = TestDatabase::create("coupon").await.unwrap();
    spawn_on(db.clone(), db.url.clone()).await
}

/// A coupon server on `db`, reached through `url` (e.g. via a proxy).
pub async fn spawn_on(db: TestDatabase, url: String) -> TestApp {
    let app = coupon_service::build(ServerConfig::for_tests("coupon", url))
        .await
        .unwrap();
    let server = TestServer::start(app);
    let channel = server.channel();
    TestApp {
        db,
        admin: CouponAdminServiceClient::new(channel.clone()),
        coupons: CouponServiceClient::new(channel),
        server,
    }
}

impl TestApp {
    pub async fn stop(self) {
        self.server.stop().await.unwrap();
        self.db.drop_database().await.unwrap();
    }

    pub async fn create_template(&self, request: pb::CreateTemplateRequest) -> pb::CouponTemplate {
        self.admin
            .clone()
            .create_template(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn get_template(&self, template_id: i64) -> pb::CouponTemplate {
        self.admin
            .clone()
            .get_template(pb::GetTemplateRequest { template_id })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn issue(
        &self,
        template_id: i64,
        user_id: &str,
    ) -> Result<pb::UserCoupon, tonic::Status> {
        self.coupons
            .clone()
            .issue_coupon(pb::IssueCouponRequest {
                template_id,
                user_id: user_id.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn quote(
        &self,
        user_id: &str,
        user_coupon_id: i64,
        order_amount: i64,
    ) -> Result<pb::DiscountQuote, tonic::Status> {
        self.coupons
            .clone()
            .quote_discount(pb::QuoteDiscountRequest {
                user_id: user_id.to_owned(),
                user_coupon_id,
                order_amount,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn use_coupon(
        &self,
        saga_id: &str,
        coupon: &pb::UserCoupon,
        order_amount: i64,
        expected_discount: Option<i64>,
    ) -> Result<pb::UseCouponResponse, tonic::Status> {
        self.coupons
            .clone()
            .use_coupon(pb::UseCouponRequest {
                saga_id: saga_id.to_owned(),
                user_id: coupon.user_id.clone(),
                user_coupon_id: coupon.id,
                order_amount,
                expected_discount,
                saga_fence: 0,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn restore(&self, saga_id: &str) -> Result<pb::RestoreCouponResponse, tonic::Status> {
        self.coupons
            .clone()
            .restore_coupon(pb::RestoreCouponRequest {
                saga_id: saga_id.to_owned(),
                saga_fence: 0,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The user's coupon `id` as listed now.
    pub async fn coupon(&self, user_id: &str, id: i64) -> pb::UserCoupon {
        let listed = self.list(user_id, 0, 100).await.unwrap();
        listed.coupons.into_iter().find(|c| c.id == id).unwrap()
    }

    pub async fn list(
        &self,
        user_id: &str,
        page: i32,
        size: i32,
    ) -> Result<pb::ListUserCouponsResponse, tonic::Status> {
        self.coupons
            .clone()
            .list_user_coupons(pb::ListUserCouponsRequest {
                user_id: user_id.to_owned(),
                page,
                size,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Runs one statement on the stored state (to stage what the API cannot).
    pub async fn execute(&self, sql: &str) {
        let mut conn = self.db.connect().await.unwrap();
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }

    /// A one-column `BIGINT` query (`SELECT ... AS n`) on the stored state.
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
}

pub fn timestamp(t: chrono::DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap(),
    })
}

/// A FIXED template valid from an hour ago for a day, no minimum, 100 coupons.
pub fn fixed(amount: i64) -> pb::CreateTemplateRequest {
    let now = Utc::now();
    pb::CreateTemplateRequest {
        name: format!("{amount} KRW off"),
        kind: pb::DiscountKind::Fixed.into(),
        value: amount,
        max_discount: None,
        min_order_amount: 0,
        valid_from: timestamp(now - Duration::hours(1)),
        valid_until: timestamp(now + Duration::days(1)),
        total_quantity: 100,
    }
}

/// A PERCENT template, otherwise like [`fixed`].
pub fn percent(pct: i64, max_discount: Option<i64>) -> pb::CreateTemplateRequest {
    pb::CreateTemplateRequest {
        name: format!("{pct}% off"),
        kind: pb::DiscountKind::Percent.into(),
        value: pct,
        max_discount,
        ..fixed(1)
    }
}

/// The same template, valid only in the past (expired a day ago).
pub fn expired(request: pb::CreateTemplateRequest) -> pb::CreateTemplateRequest {
    let now = Utc::now();
    pb::CreateTemplateRequest {
        valid_from: timestamp(now - Duration::days(2)),
        valid_until: timestamp(now - Duration::days(1)),
        ..request
    }
}

/// The same template, valid only from tomorrow.
pub fn upcoming(request: pb::CreateTemplateRequest) -> pb::CreateTemplateRequest {
    let now = Utc::now();
    pb::CreateTemplateRequest {
        valid_from: timestamp(now + Duration::days(1)),
        valid_until: timestamp(now + Duration::days(2)),
        ..request
    }
}

/// A fresh saga id.
pub fn saga() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn state(coupon: &pb::UserCoupon) -> pb::UserCouponState {
    pb::UserCouponState::try_from(coupon.state).unwrap()
}
