//! The saga steps: reserve, confirm, release, each repeated, out of order and
//! failing, with the stock and the barrier checked after each.

use commerce_proto::product::v1 as pb;
use commerce_testkit::{assert_status, error_reason};
use tonic::Code;

use crate::support::{TestApp, saga, spawn};

/// A brand and two ON_SALE products with 10 and 3 units.
async fn two_products(app: &TestApp) -> (pb::Product, pb::Product) {
    let brand = app.brand("Acme").await;
    let boots = app.product(brand.id, "Boots", 30_000, 10).await;
    let socks = app.product(brand.id, "Socks", 5_000, 3).await;
    (boots, socks)
}

fn line_summary(reservation: &pb::Reservation) -> Vec<(i64, i64)> {
    reservation
        .lines
        .iter()
        .map(|line| (line.product_id, line.quantity))
        .collect()
}

#[tokio::test]
async fn reserve_merges_lines_and_returns_the_snapshot_in_product_order() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let saga_id = saga();

    let reservation = app
        .reserve(&saga_id, &[(socks.id, 1), (boots.id, 2), (socks.id, 2)])
        .await
        .unwrap();
    assert_eq!(reservation.saga_id, saga_id);
    assert_eq!(reservation.state(), pb::ReservationState::Reserved);
    assert_eq!(line_summary(&reservation), [(boots.id, 2), (socks.id, 3)]);
    let line = &reservation.lines[1];
    assert_eq!(line.product_name, "Socks");
    assert_eq!(line.brand_id, socks.brand_id);
    assert_eq!(line.brand_name, "Acme");
    assert_eq!(line.unit_price, 5_000);
    assert_eq!(app.stock_of(boots.id).await, (8, 2, 0));
    assert_eq!(app.stock_of(socks.id).await, (0, 3, 0));
    assert_eq!(app.reservation(&saga_id).await.unwrap(), reservation);
    assert_eq!(
        app.barrier_rows(&saga_id).await,
        ["reserve_stock:BARRIER_STATE_APPLIED"]
    );
    app.stop().await;
}

#[tokio::test]
async fn reserve_twice_returns_the_first_result_and_changes_stock_once() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let saga_id = saga();

    let first = app.reserve(&saga_id, &[(boots.id, 4)]).await.unwrap();
    // A repeat replays the first result, whatever it carries.
    let again = app.reserve(&saga_id, &[(boots.id, 4)]).await.unwrap();
    let different = app.reserve(&saga_id, &[(socks.id, 1)]).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(different, first);
    assert_eq!(app.stock_of(boots.id).await, (6, 4, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM reservations").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn release_before_reserve_is_a_noop_and_blocks_the_reserve() {
    let app = spawn().await;
    let (boots, _) = two_products(&app).await;
    let saga_id = saga();

    let released = app.release(&saga_id).await.unwrap();
    assert_eq!(released.saga_id, saga_id);
    assert!(!released.released);
    assert_eq!(released.previous_state(), pb::ReservationState::Unspecified);
    assert!(released.lines.is_empty());

    assert_status(
        app.reserve(&saga_id, &[(boots.id, 1)]).await,
        Code::FailedPrecondition,
        "SAGA_ALREADY_COMPENSATED",
    );
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_status(
        app.reservation(&saga_id).await,
        Code::NotFound,
        "RESERVATION_NOT_FOUND",
    );
    // Still a no-op, and still blocking, when repeated.
    assert_eq!(app.release(&saga_id).await.unwrap(), released);
    assert_status(
        app.reserve(&saga_id, &[(boots.id, 1)]).await,
        Code::FailedPrecondition,
        "SAGA_ALREADY_COMPENSATED",
    );
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(
        app.barrier_rows(&saga_id).await.len(),
        2,
        "release_stock applied and reserve_stock blocked"
    );
    app.stop().await;
}

#[tokio::test]
async fn release_twice_restocks_once() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let saga_id = saga();
    let reservation = app
        .reserve(&saga_id, &[(boots.id, 2), (socks.id, 3)])
        .await
        .unwrap();

    let released = app.release(&saga_id).await.unwrap();
    assert!(released.released);
    assert_eq!(released.previous_state(), pb::ReservationState::Reserved);
    assert_eq!(released.lines, reservation.lines);
    assert_eq!(app.release(&saga_id).await.unwrap(), released);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));
    assert_eq!(
        app.reservation(&saga_id).await.unwrap().state(),
        pb::ReservationState::Released
    );
    // A late repeat of the reserve replays; it never reserves again.
    assert_eq!(
        app.reserve(&saga_id, &[(boots.id, 2), (socks.id, 3)])
            .await
            .unwrap(),
        reservation
    );
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    app.stop().await;
}

#[tokio::test]
async fn failed_reserve_leaves_a_clean_slate() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let suspended = app.product(boots.brand_id, "Hat", 1_000, 5).await;
    app.admin
        .clone()
        .update_product(pb::UpdateProductRequest {
            product_id: suspended.id,
            status: Some(pb::ProductStatus::Suspended.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = app.row_counts().await;

    // The first line could be served; the second is short: nothing happens.
    let saga_id = saga();
    let short = app
        .reserve(&saga_id, &[(boots.id, 1), (socks.id, 4)])
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&short).as_deref(), Some("STOCK_INSUFFICIENT"));
    assert!(
        short.message().contains(&format!("product {}", socks.id)),
        "{short:?}"
    );

    let other = saga();
    assert_status(
        app.reserve(&other, &[(boots.id, 1), (suspended.id, 1)])
            .await,
        Code::FailedPrecondition,
        "PRODUCT_NOT_ON_SALE",
    );
    assert_status(
        app.reserve(&other, &[(boots.id, 1), (424_242, 1)]).await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );

    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));
    assert_eq!(app.stock_of(suspended.id).await, (5, 0, 0));
    assert!(app.barrier_rows(&saga_id).await.is_empty());

    // Its compensation finds nothing to undo.
    let released = app.release(&saga_id).await.unwrap();
    assert!(!released.released);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));

    // A failed reserve is no barrier entry: the same saga may try again.
    let retried = app.reserve(&other, &[(boots.id, 1)]).await.unwrap();
    assert_eq!(line_summary(&retried), [(boots.id, 1)]);
    app.stop().await;
}

#[tokio::test]
async fn confirm_then_release_restocks_a_cancelled_order() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let saga_id = saga();
    let reservation = app
        .reserve(&saga_id, &[(boots.id, 2), (socks.id, 1)])
        .await
        .unwrap();

    let confirmed = app.confirm(&saga_id).await.unwrap();
    assert_eq!(confirmed.state(), pb::ReservationState::Confirmed);
    assert_eq!(confirmed.lines, reservation.lines);
    assert_eq!(confirmed.created_at, reservation.created_at);
    assert_eq!(app.confirm(&saga_id).await.unwrap(), confirmed);
    assert_eq!(app.stock_of(boots.id).await, (8, 0, 2));
    assert_eq!(app.stock_of(socks.id).await, (2, 0, 1));
    assert_eq!(app.reservation(&saga_id).await.unwrap(), confirmed);

    let released = app.release(&saga_id).await.unwrap();
    assert!(released.released);
    assert_eq!(released.previous_state(), pb::ReservationState::Confirmed);
    assert_eq!(app.release(&saga_id).await.unwrap(), released);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));
    // The confirm barrier replays its first result; the stock stays put.
    assert_eq!(app.confirm(&saga_id).await.unwrap(), confirmed);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    app.stop().await;
}

#[tokio::test]
async fn confirm_needs_a_reservation_that_was_not_released() {
    let app = spawn().await;
    let (boots, _) = two_products(&app).await;

    let never_reserved = saga();
    assert_status(
        app.confirm(&never_reserved).await,
        Code::NotFound,
        "RESERVATION_NOT_FOUND",
    );
    assert!(app.barrier_rows(&never_reserved).await.is_empty());

    let saga_id = saga();
    app.reserve(&saga_id, &[(boots.id, 3)]).await.unwrap();
    app.release(&saga_id).await.unwrap();
    for _ in 0..2 {
        assert_status(
            app.confirm(&saga_id).await,
            Code::FailedPrecondition,
            "RESERVATION_RELEASED",
        );
    }
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    app.stop().await;
}

#[tokio::test]
async fn snapshot_survives_later_catalogue_changes() {
    let app = spawn().await;
    let (boots, _) = two_products(&app).await;
    let saga_id = saga();
    let reservation = app.reserve(&saga_id, &[(boots.id, 1)]).await.unwrap();

    app.admin
        .clone()
        .update_product(pb::UpdateProductRequest {
            product_id: boots.id,
            name: Some("Boots v2".to_owned()),
            price: Some(99_000),
            status: None,
        })
        .await
        .unwrap();
    app.admin
        .clone()
        .update_brand(pb::UpdateBrandRequest {
            brand_id: boots.brand_id,
            name: Some("Renamed".to_owned()),
            description: None,
        })
        .await
        .unwrap();

    let stored = app.reservation(&saga_id).await.unwrap();
    assert_eq!(stored, reservation);
    let line = &stored.lines[0];
    assert_eq!(
        (
            line.product_name.as_str(),
            line.brand_name.as_str(),
            line.unit_price
        ),
        ("Boots", "Acme", 30_000)
    );
    assert_eq!(
        app.confirm(&saga_id).await.unwrap().lines,
        reservation.lines
    );
    // A new reservation takes the new snapshot.
    let later = app.reserve(&saga(), &[(boots.id, 1)]).await.unwrap();
    assert_eq!(later.lines[0].unit_price, 99_000);
    assert_eq!(later.lines[0].brand_name, "Renamed");
    app.stop().await;
}

#[tokio::test]
async fn invalid_reservation_inputs_name_the_field_and_change_nothing() {
    let app = spawn().await;
    let (boots, socks) = two_products(&app).await;
    let before = app.row_counts().await;
    let saga_id = saga();

    let too_many: Vec<(i64, i64)> = (0..101).map(|_| (boots.id, 1)).collect();
    for (saga_id, lines, field) in [
        (String::new(), vec![(boots.id, 1)], "saga_id"),
        ("not-a-uuid".to_owned(), vec![(boots.id, 1)], "saga_id"),
        (saga_id.clone(), vec![], "lines"),
        (saga_id.clone(), too_many, "lines"),
        (
            saga_id.clone(),
            vec![(boots.id, 1), (socks.id, 0)],
            "lines[1].quantity",
        ),
        (saga_id.clone(), vec![(boots.id, -2)], "lines[0].quantity"),
        (saga_id.clone(), vec![(boots.id, 1001)], "lines[0].quantity"),
        (
            saga_id.clone(),
            vec![(boots.id, 1), (socks.id, 1), (0, 1)],
            "lines[2].product_id",
        ),
        (saga_id.clone(), vec![(-7, 1)], "lines[0].product_id"),
    ] {
        assert_status(
            app.reserve(&saga_id, &lines).await,
            Code::InvalidArgument,
            field,
        );
    }
    for bad in ["", "1234", "5a1b6d1e-8c3f-4f7a-9b1e-2d3c4b5a6f7"] {
        assert_status(app.confirm(bad).await, Code::InvalidArgument, "saga_id");
        assert_status(app.release(bad).await, Code::InvalidArgument, "saga_id");
        assert_status(app.reservation(bad).await, Code::InvalidArgument, "saga_id");
    }

    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.stock_of(boots.id).await, (10, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (3, 0, 0));
    // 100 lines of 1000 units is the largest valid request; it merges into one.
    let big: Vec<(i64, i64)> = (0..100).map(|_| (boots.id, 1000)).collect();
    assert_status(
        app.reserve(&saga_id, &big).await,
        Code::FailedPrecondition,
        "STOCK_INSUFFICIENT",
    );
    app.stop().await;
}
