//! Stock conservation under a concurrent storm of saga steps: every move is
//! a guarded relative UPDATE, so whatever the interleaving, available +
//! reserved + sold stays the initial stock, no bucket goes negative, and the
//! buckets agree with the reservations' states.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use commerce_proto::product::v1 as pb;
use commerce_testkit::error_reason;
use futures::future::join_all;
use tonic::Code;

use crate::support::{lines, saga, saga_request, spawn};

type StockClient = pb::stock_service_client::StockServiceClient<commerce_testkit::TestChannel>;

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// What a saga does after its reserve, each call sent twice at once.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Confirm,
    Release,
    /// Confirmed, then cancelled: sold units go back.
    ConfirmThenRelease,
    /// Confirm and release race.
    ConfirmRacingRelease,
    /// The release arrives before the reserve.
    ReleaseFirst,
}

/// A saga id, its `(product id, quantity)` lines and its plan.
type SagaRun = (String, Vec<(i64, i64)>, Plan);

/// Fails the test on anything but success or a business answer.
fn check<T>(step: &str, result: Result<T, tonic::Status>) {
    if let Err(status) = result {
        let reason = error_reason(&status).unwrap_or_default();
        let expected = match status.code() {
            Code::FailedPrecondition => [
                "STOCK_INSUFFICIENT",
                "RESERVATION_RELEASED",
                "SAGA_ALREADY_COMPENSATED",
            ]
            .contains(&reason.as_str()),
            Code::NotFound => reason == "RESERVATION_NOT_FOUND",
            _ => false,
        };
        assert!(expected, "{step}: {status:?}");
    }
}

/// Sends `call` twice at once.
async fn twice<F, Fut, T>(step: &str, call: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let (a, b) = tokio::join!(call(), call());
    check(step, a);
    check(step, b);
}

async fn run_saga(client: StockClient, saga_id: String, request: Vec<(i64, i64)>, plan: Plan) {
    let reserve = || {
        let mut client = client.clone();
        let request = pb::ReserveStockRequest {
            saga_id: saga_id.clone(),
            lines: lines(&request),
            saga_fence: 0,
            ..Default::default()
        };
        async move { client.reserve_stock(request).await }
    };
    let confirm = || {
        let mut client = client.clone();
        let request = saga_request(&saga_id);
        async move { client.confirm_reservation(request).await }
    };
    let release = || {
        let mut client = client.clone();
        let request = saga_request(&saga_id);
        async move { client.release_reservation(request).await }
    };
    match plan {
        Plan::ReleaseFirst => {
            twice("release", release).await;
            twice("reserve", reserve).await;
            twice("confirm", confirm).await;
        }
        Plan::Confirm => {
            twice("reserve", reserve).await;
            twice("confirm", confirm).await;
        }
        Plan::Release => {
            twice("reserve", reserve).await;
            twice("release", release).await;
        }
        Plan::ConfirmThenRelease => {
            twice("reserve", reserve).await;
            twice("confirm", confirm).await;
            twice("release", release).await;
        }
        Plan::ConfirmRacingRelease => {
            twice("reserve", reserve).await;
            tokio::join!(twice("confirm", confirm), twice("release", release));
        }
    }
}

#[tokio::test]
async fn concurrent_reserve_confirm_release_with_repeats_conserve_stock() {
    let app = spawn().await;
    let brand = app.brand("Acme").await;
    let mut initial = BTreeMap::new();
    for (name, units) in [("Boots", 60), ("Socks", 40), ("Hat", 12)] {
        let product = app.product(brand.id, name, 1_000, units).await;
        initial.insert(product.id, units);
    }
    let ids: Vec<i64> = initial.keys().copied().collect();

    // 40 sagas of 1-3 lines (a product may repeat; lines are merged) asking
    // more than there is in all, so some reserves are refused.
    let mut rng = Lcg(7);
    let plans = [
        Plan::Confirm,
        Plan::Release,
        Plan::ConfirmThenRelease,
        Plan::ConfirmRacingRelease,
        Plan::ReleaseFirst,
    ];
    let sagas: Vec<SagaRun> = (0..40)
        .map(|_| {
            let request = (0..=rng.below(3))
                .map(|_| {
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    (id, 1 + rng.below(4) as i64)
                })
                .collect();
            let plan = plans[rng.below(plans.len() as u64) as usize];
            (saga(), request, plan)
        })
        .collect();

    // While the storm runs, every stock read adds up and is non-negative.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let mut catalog = app.catalog.clone();
        let initial = initial.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            for _ in 0..100 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                for (&product_id, &units) in &initial {
                    let stock = catalog
                        .get_product(pb::GetProductRequest { product_id })
                        .await
                        .unwrap()
                        .into_inner()
                        .stock
                        .unwrap();
                    let (a, r, s) = (stock.available, stock.reserved, stock.sold);
                    assert!(a >= 0 && r >= 0 && s >= 0, "{stock:?}");
                    assert_eq!(a + r + s, units, "{stock:?}");
                    samples += 1;
                }
            }
            samples
        })
    };
    let storm = sagas.iter().map(|(saga_id, request, plan)| {
        tokio::spawn(run_saga(
            app.stock.clone(),
            saga_id.clone(),
            request.clone(),
            *plan,
        ))
    });
    for result in join_all(storm).await {
        result.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(sampler.await.unwrap() > 0);

    // The buckets are exactly what the reservations hold.
    let mut reserved = BTreeMap::<i64, i64>::new();
    let mut sold = BTreeMap::<i64, i64>::new();
    let mut states = BTreeMap::<String, usize>::new();
    for (saga_id, _, plan) in &sagas {
        let state = match app.reservation(saga_id).await {
            Ok(reservation) => {
                let state = reservation.state();
                let bucket = match state {
                    pb::ReservationState::Reserved => Some(&mut reserved),
                    pb::ReservationState::Confirmed => Some(&mut sold),
                    _ => None,
                };
                if let Some(bucket) = bucket {
                    for line in &reservation.lines {
                        *bucket.entry(line.product_id).or_default() += line.quantity;
                    }
                }
                // Every plan ends with the reservation confirmed or released.
                assert_ne!(state, pb::ReservationState::Reserved, "{plan:?}");
                state.as_str_name().to_owned()
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{status:?}");
                "NONE".to_owned()
            }
        };
        *states.entry(state).or_default() += 1;
    }
    for (&product_id, &units) in &initial {
        let (a, r, s) = app.stock_of(product_id).await;
        let expected_reserved = reserved.get(&product_id).copied().unwrap_or(0);
        let expected_sold = sold.get(&product_id).copied().unwrap_or(0);
        assert_eq!(
            (a, r, s),
            (
                units - expected_reserved - expected_sold,
                expected_reserved,
                expected_sold
            ),
            "product {product_id}, reservations {states:?}"
        );
    }
    assert_eq!(
        app.count(
            "SELECT COUNT(*) AS n FROM product_stock \
             WHERE available < 0 OR reserved < 0 OR sold < 0"
        )
        .await,
        0
    );
    assert!(states.len() > 1, "a storm of one outcome: {states:?}");
    app.stop().await;
}
