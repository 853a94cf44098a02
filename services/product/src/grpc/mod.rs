//! The gRPC edge: thin handlers that parse a request into domain types (errors
//! name the proto field), call one store method and convert the result. Errors
//! become `tonic::Status` through the platform's single `From` impl.

mod admin;
mod catalogue;
mod stock;

use commerce_platform::{ServiceError, time};
use commerce_proto::product::v1 as pb;
use pb::catalog_service_server::CatalogServiceServer;
use pb::product_admin_service_server::ProductAdminServiceServer;
use pb::stock_service_server::StockServiceServer;

use crate::domain::{
    Brand, Product, ProductSort, ProductStatus, ReleaseOutcome, Reservation, ReservationState,
    ReservedLine, Stock,
};
use crate::ranking::{Ranking, RankingWindow};
use crate::store::ProductStore;

pub use admin::ProductAdmin;
pub use catalogue::Catalogue;
pub use stock::StockReservations;

pub fn catalogue_server(store: ProductStore, ranking: Ranking) -> CatalogServiceServer<Catalogue> {
    CatalogServiceServer::new(Catalogue::new(store, ranking))
}

pub fn admin_server(
    store: ProductStore,
    ranking: Ranking,
) -> ProductAdminServiceServer<ProductAdmin> {
    ProductAdminServiceServer::new(ProductAdmin::new(store, ranking))
}

pub fn stock_server(store: ProductStore) -> StockServiceServer<StockReservations> {
    StockServiceServer::new(StockReservations::new(store))
}

/// A wire product status; UNSPECIFIED gives `unspecified` (a default, or an
/// error when the field must be explicit).
fn status_from_proto(
    field: &str,
    raw: i32,
    unspecified: Option<ProductStatus>,
) -> Result<ProductStatus, ServiceError> {
    match pb::ProductStatus::try_from(raw) {
        Ok(pb::ProductStatus::OnSale) => Ok(ProductStatus::OnSale),
        Ok(pb::ProductStatus::Suspended) => Ok(ProductStatus::Suspended),
        Ok(pb::ProductStatus::Discontinued) => Ok(ProductStatus::Discontinued),
        Ok(pb::ProductStatus::Unspecified) => {
            unspecified.ok_or_else(|| ServiceError::invalid(field, "must be a product status"))
        }
        Err(_) => Err(ServiceError::invalid(
            field,
            format!("unknown product status {raw}"),
        )),
    }
}

fn status_to_proto(status: ProductStatus) -> pb::ProductStatus {
    match status {
        ProductStatus::OnSale => pb::ProductStatus::OnSale,
        ProductStatus::Suspended => pb::ProductStatus::Suspended,
        ProductStatus::Discontinued => pb::ProductStatus::Discontinued,
    }
}

fn sort_from_proto(field: &str, raw: i32) -> Result<ProductSort, ServiceError> {
    match pb::ProductSort::try_from(raw) {
        Ok(pb::ProductSort::Unspecified | pb::ProductSort::Latest) => Ok(ProductSort::Latest),
        Ok(pb::ProductSort::PriceAsc) => Ok(ProductSort::PriceAsc),
        Ok(pb::ProductSort::LikesDesc) => Ok(ProductSort::LikesDesc),
        Err(_) => Err(ServiceError::invalid(field, format!("unknown sort {raw}"))),
    }
}

/// A wire ranking window; UNSPECIFIED is a day.
fn window_from_proto(field: &str, raw: i32) -> Result<RankingWindow, ServiceError> {
    match pb::RankingWindow::try_from(raw) {
        Ok(pb::RankingWindow::Unspecified | pb::RankingWindow::Day) => Ok(RankingWindow::Day),
        Ok(pb::RankingWindow::Week) => Ok(RankingWindow::Week),
        Ok(pb::RankingWindow::Month) => Ok(RankingWindow::Month),
        Err(_) => Err(ServiceError::invalid(
            field,
            format!("unknown window {raw}"),
        )),
    }
}

fn window_to_proto(window: RankingWindow) -> pb::RankingWindow {
    match window {
        RankingWindow::Day => pb::RankingWindow::Day,
        RankingWindow::Week => pb::RankingWindow::Week,
        RankingWindow::Month => pb::RankingWindow::Month,
    }
}

fn brand_to_proto(brand: Brand) -> pb::Brand {
    pb::Brand {
        id: brand.id,
        name: brand.name,
        description: brand.description,
        created_at: Some(time::to_proto(brand.created_at)),
        updated_at: Some(time::to_proto(brand.updated_at)),
    }
}

fn stock_to_proto(stock: Stock) -> pb::Stock {
    pb::Stock {
        product_id: stock.product_id,
        available: stock.available,
        reserved: stock.reserved,
        sold: stock.sold,
    }
}

fn product_to_proto(product: Product) -> pb::Product {
    pb::Product {
        id: product.id,
        brand_id: product.brand_id,
        brand_name: product.brand_name,
        name: product.name,
        price: product.price,
        status: status_to_proto(product.status).into(),
        like_count: product.like_count,
        stock: Some(stock_to_proto(product.stock)),
        created_at: Some(time::to_proto(product.created_at)),
        updated_at: Some(time::to_proto(product.updated_at)),
    }
}

fn state_to_proto(state: ReservationState) -> pb::ReservationState {
    match state {
        ReservationState::Reserved => pb::ReservationState::Reserved,
        ReservationState::Confirmed => pb::ReservationState::Confirmed,
        ReservationState::Released => pb::ReservationState::Released,
    }
}

fn line_to_proto(line: ReservedLine) -> pb::ReservedLine {
    pb::ReservedLine {
        product_id: line.product_id,
        quantity: line.quantity,
        product_name: line.product_name,
        brand_id: line.brand_id,
        brand_name: line.brand_name,
        unit_price: line.unit_price,
    }
}

fn reservation_to_proto(reservation: Reservation) -> pb::Reservation {
    pb::Reservation {
        saga_id: reservation.saga_id,
        state: state_to_proto(reservation.state).into(),
        lines: reservation.lines.into_iter().map(line_to_proto).collect(),
        created_at: Some(time::to_proto(reservation.created_at)),
        updated_at: Some(time::to_proto(reservation.updated_at)),
    }
}

fn release_to_proto(outcome: ReleaseOutcome) -> pb::ReleaseReservationResponse {
    pb::ReleaseReservationResponse {
        saga_id: outcome.saga_id,
        released: outcome.released,
        previous_state: outcome
            .previous_state
            .map_or(pb::ReservationState::Unspecified, state_to_proto)
            .into(),
        lines: outcome.lines.into_iter().map(line_to_proto).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn wire_enums_map_both_ways() {
        for status in [
            ProductStatus::OnSale,
            ProductStatus::Suspended,
            ProductStatus::Discontinued,
        ] {
            let raw = i32::from(status_to_proto(status));
            assert_eq!(status_from_proto("status", raw, None).unwrap(), status);
        }
        assert_eq!(
            status_from_proto("status", 0, Some(ProductStatus::OnSale)).unwrap(),
            ProductStatus::OnSale
        );
        assert!(status_from_proto("status", 0, None).is_err());
        assert!(status_from_proto("status", 42, Some(ProductStatus::OnSale)).is_err());
        assert_eq!(sort_from_proto("sort", 0).unwrap(), ProductSort::Latest);
        assert_eq!(sort_from_proto("sort", 3).unwrap(), ProductSort::LikesDesc);
        assert!(sort_from_proto("sort", -1).is_err());
    }
}
