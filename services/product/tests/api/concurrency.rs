//! Many concurrent calls through the real server: exact outcomes and stock
//! invariants, no deadlock ever surfacing to a caller.

use std::collections::BTreeMap;

use commerce_proto::product::v1 as pb;
use commerce_testkit::error_reason;
use futures::future::join_all;
use tonic::Code;

use crate::support::{TestApp, lines, saga, saga_request, spawn};

/// Sends every request concurrently, each on its own task.
async fn reserve_all(
    app: &TestApp,
    requests: Vec<(String, Vec<(i64, i64)>)>,
) -> Vec<Result<pb::Reservation, tonic::Status>> {
    let tasks = requests.into_iter().map(|(saga_id, request)| {
        let mut client = app.stock.clone();
        tokio::spawn(async move {
            client
                .reserve_stock(pb::ReserveStockRequest {
                    saga_id,
                    lines: lines(&request),
                    saga_fence: 0,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        })
    });
    join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Counts results by outcome: "OK" or the error reason.
fn tally<T>(results: &[Result<T, tonic::Status>]) -> BTreeMap<String, usize> {
    let mut tally = BTreeMap::new();
    for result in results {
        let key = match result {
            Ok(_) => "OK".to_owned(),
            Err(status) => format!(
                "{:?}/{}",
                status.code(),
                error_reason(status).unwrap_or_default()
            ),
        };
        *tally.entry(key).or_default() += 1;
    }
    tally
}

#[tokio::test]
async fn concurrent_single_unit_reservations_never_oversell() {
    let app = spawn().await;
    let brand = app.brand("Acme").await;
    let product = app.product(brand.id, "Limited", 1_000, 20).await;

    let requests = (0..120).map(|_| (saga(), vec![(product.id, 1)])).collect();
    let results = reserve_all(&app, requests).await;
    let expected = BTreeMap::from([
        ("OK".to_owned(), 20),
        ("FailedPrecondition/STOCK_INSUFFICIENT".to_owned(), 100),
    ]);
    assert_eq!(tally(&results), expected);

    let (available, reserved, sold) = app.stock_of(product.id).await;
    assert_eq!((available, reserved, sold), (0, 20, 0));
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM reservations").await,
        20
    );
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM product_stock WHERE available < 0 OR reserved < 0")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn opposite_line_orders_never_deadlock() {
    let app = spawn().await;
    let brand = app.brand("Acme").await;
    let a = app.product(brand.id, "A", 1_000, 40).await;
    let b = app.product(brand.id, "B", 2_000, 40).await;

    let requests = (0..60)
        .map(|i| {
            let request = if i % 2 == 0 {
                vec![(a.id, 1), (b.id, 1)]
            } else {
                vec![(b.id, 1), (a.id, 1)]
            };
            (saga(), request)
        })
        .collect();
    let results = reserve_all(&app, requests).await;
    let expected = BTreeMap::from([
        ("OK".to_owned(), 40),
        ("FailedPrecondition/STOCK_INSUFFICIENT".to_owned(), 20),
    ]);
    assert_eq!(tally(&results), expected);
    for result in results.iter().flatten() {
        let ids: Vec<i64> = result.lines.iter().map(|l| l.product_id).collect();
        assert_eq!(ids, [a.id, b.id]);
    }
    assert_eq!(app.stock_of(a.id).await, (0, 40, 0));
    assert_eq!(app.stock_of(b.id).await, (0, 40, 0));
    app.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_confirms_and_releases_settle_consistently() {
    let app = spawn().await;
    let brand = app.brand("Acme").await;
    let a = app.product(brand.id, "A", 1_000, 100).await;
    let b = app.product(brand.id, "B", 2_000, 100).await;

    // Every saga's reserve sent four times at once: each applies once.
    let sagas: Vec<String> = (0..25).map(|_| saga()).collect();
    let requests = sagas
        .iter()
        .flat_map(|saga_id| (0..4).map(move |_| (saga_id.clone(), vec![(b.id, 1), (a.id, 2)])))
        .collect();
    let results = reserve_all(&app, requests).await;
    assert_eq!(tally(&results), BTreeMap::from([("OK".to_owned(), 100)]));
    assert_eq!(app.stock_of(a.id).await, (50, 50, 0));
    assert_eq!(app.stock_of(b.id).await, (75, 25, 0));

    // Then confirm and release race for every saga, twice each. Whichever
    // wins, the units end up back in `available`.
    let mut tasks = Vec::new();
    for saga_id in &sagas {
        for _ in 0..2 {
            let mut client = app.stock.clone();
            let id = saga_id.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .confirm_reservation(saga_request(&id))
                    .await
                    .map(|_| ())
            }));
            let mut client = app.stock.clone();
            let id = saga_id.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .release_reservation(saga_request(&id))
                    .await
                    .map(|_| ())
            }));
        }
    }
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (outcome, _) in tally(&results) {
        assert!(
            outcome == "OK" || outcome == "FailedPrecondition/RESERVATION_RELEASED",
            "unexpected outcome {outcome}"
        );
    }
    assert_eq!(app.stock_of(a.id).await, (100, 0, 0));
    assert_eq!(app.stock_of(b.id).await, (100, 0, 0));
    for saga_id in &sagas {
        let reservation = app.reservation(saga_id).await.unwrap();
        assert_eq!(reservation.state(), pb::ReservationState::Released);
    }
    app.stop().await;
}

#[tokio::test]
async fn concurrent_likes_count_each_user_once() {
    let app = spawn().await;
    let brand = app.brand("Acme").await;
    let product = app.product(brand.id, "Popular", 1_000, 1).await;

    let call = |like: bool, user: usize| {
        let mut client = app.catalog.clone();
        let request = pb::LikeProductRequest {
            user_id: format!("user-{user}"),
            product_id: product.id,
        };
        tokio::spawn(async move {
            if like {
                client.like_product(request).await
            } else {
                client.unlike_product(request).await
            }
        })
    };

    // 30 users, each liking 4 times at once.
    let likes = (0..120).map(|i| call(true, i % 30));
    for result in join_all(likes).await {
        assert!(result.unwrap().is_ok());
    }
    assert_eq!(app.get_product(product.id).await.like_count, 30);
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM product_likes").await,
        30
    );

    // 20 of them unlike 3 times at once, while 5 new users like.
    let mixed = (0..60)
        .map(|i| call(false, i % 20))
        .chain((30..35).map(|user| call(true, user)));
    for result in join_all(mixed).await {
        assert_eq!(
            result.unwrap().map(|_| ()).map_err(|s| s.code()),
            Ok::<(), Code>(())
        );
    }
    assert_eq!(app.get_product(product.id).await.like_count, 15);
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM product_likes").await,
        15
    );
    app.stop().await;
}
