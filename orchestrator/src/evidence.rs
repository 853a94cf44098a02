//! What the participants hold for an order, read for reconciliation: their
//! barrier rows (`SagaBarrierService/ListBarriers`, which the orchestrator
//! may read) and the product service's reservation.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use commerce_proto::product::v1 as product;
use commerce_proto::product::v1::stock_service_client::StockServiceClient;
use commerce_proto::saga::v1 as barrier;
use commerce_proto::saga::v1::saga_barrier_service_client::SagaBarrierServiceClient;
use tonic::{Code, Status};

use crate::domain::reconcile::{BarrierFact, Holdings, Participant, ReservationFact};
use commerce_platform::trace_context::{TracedChannel, traced};

use crate::participants::{ParticipantConfig, channel};

/// One barrier row of any saga, from a window listing.
#[derive(Debug, Clone)]
pub struct BarrierRow {
    pub saga_id: String,
    pub operation: String,
    pub created_at: Option<NaiveDateTime>,
}

#[derive(Clone)]
pub struct Evidence {
    barriers: BTreeMap<Participant, SagaBarrierServiceClient<TracedChannel>>,
    stock: StockServiceClient<TracedChannel>,
    config: ParticipantConfig,
}

impl Evidence {
    pub fn new(config: &ParticipantConfig) -> anyhow::Result<Self> {
        let barriers = [
            (Participant::Product, &config.product),
            (Participant::Point, &config.point),
            (Participant::Coupon, &config.coupon),
        ]
        .into_iter()
        .map(|(p, uri)| {
            Ok((
                p,
                SagaBarrierServiceClient::new(traced(channel(uri, config)?)),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            barriers,
            stock: StockServiceClient::new(traced(channel(&config.product, config)?)),
            config: config.clone(),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.config.call_timeout);
        request
    }

    /// What `participants` hold for the order placed by `saga_id`.
    pub async fn holdings(
        &self,
        saga_id: &str,
        participants: &[Participant],
    ) -> Result<Holdings, Status> {
        let mut holdings = Holdings::default();
        for &participant in participants {
            let mut client = self.barriers[&participant].clone();
            let rows = client
                .list_barriers(self.request(barrier::ListBarriersRequest {
                    saga_id: saga_id.to_owned(),
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .entries;
            let facts = rows
                .into_iter()
                .map(|row| BarrierFact {
                    applied: row.state == barrier::BarrierState::Applied as i32,
                    operation: row.operation,
                })
                .collect();
            holdings.barriers.insert(participant, facts);
        }
        let reservation = self
            .stock
            .clone()
            .get_reservation(self.request(product::SagaRequest {
                saga_id: saga_id.to_owned(),
                saga_fence: 0,
            }))
            .await;
        holdings.reservation = Some(match reservation {
            Ok(r) => match product::ReservationState::try_from(r.into_inner().state) {
                Ok(product::ReservationState::Reserved) => ReservationFact::Reserved,
                Ok(product::ReservationState::Confirmed) => ReservationFact::Confirmed,
                Ok(product::ReservationState::Released) => ReservationFact::Released,
                _ => ReservationFact::Missing,
            },
            Err(status) if status.code() == Code::NotFound => ReservationFact::Missing,
            Err(status) => return Err(status),
        });
        Ok(holdings)
    }

    /// `participant`'s barrier rows of every saga written at or after
    /// `since`, oldest first, at most `limit`.
    pub async fn barriers_since(
        &self,
        participant: Participant,
        since: NaiveDateTime,
        limit: i32,
    ) -> Result<Vec<BarrierRow>, Status> {
        let mut client = self.barriers[&participant].clone();
        let rows = client
            .list_barriers(self.request(barrier::ListBarriersRequest {
                saga_id: String::new(),
                created_after: Some(commerce_platform::time::to_proto(since)),
                limit,
            }))
            .await?
            .into_inner()
            .entries;
        Ok(rows
            .into_iter()
            .map(|row| BarrierRow {
                created_at: row.created_at.and_then(|t| {
                    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                        .map(|d| d.naive_utc())
                }),
                saga_id: row.saga_id,
                operation: row.operation,
            })
            .collect())
    }
}
