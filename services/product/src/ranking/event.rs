//! Order events as the ranking reads them: a stream entry's protobuf
//! `OrderEvent` becomes the [`OrderChange`] it stands for, or a reason why
//! it cannot be read (an entry no retry will ever read either).

use commerce_platform::time;
use commerce_proto::events::v1 as events;
use events::order_event::Kind;
use prost::Message;

use super::model::{ChangeKind, OrderChange, merge_lines};
use crate::domain::OrderId;

/// Why a stream entry holds no readable order event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedEvent(pub String);

impl std::fmt::Display for MalformedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed(message: impl Into<String>) -> MalformedEvent {
    MalformedEvent(message.into())
}

/// The change an encoded `OrderEvent` stands for; `None` for events that
/// change no sales count (shipped, delivered).
pub fn change_from_event(encoded: &[u8]) -> Result<Option<OrderChange>, MalformedEvent> {
    let event = events::OrderEvent::decode(encoded)
        .map_err(|e| malformed(format!("not an OrderEvent: {e}")))?;
    let (kind, summary) = match event.kind {
        Some(Kind::Confirmed(e)) => (ChangeKind::Confirmed, e.order),
        Some(Kind::Cancelled(e)) => (ChangeKind::Cancelled, e.order),
        Some(Kind::Rejected(e)) => (ChangeKind::Rejected, e.order),
        Some(Kind::Shipped(_) | Kind::Delivered(_)) => return Ok(None),
        None => return Err(malformed("the event has no kind")),
    };
    let order_id = OrderId::parse("order_id", &event.order_id)
        .map_err(|_| malformed(format!("order_id {:?} is not a UUID", event.order_id)))?;
    // Sales count on the day the order was placed; an event without it (a
    // rejection before anything was priced may lack a summary) falls back
    // to when it happened, which for such an order is the same day or
    // later, and only ever closes the order.
    let placed = summary
        .as_ref()
        .and_then(|s| s.ordered_at)
        .or(event.occurred_at);
    let day = time::from_proto("ordered_at", placed)
        .map_err(|e| malformed(format!("no placement day: {e}")))?
        .date();
    let mut lines = Vec::new();
    if kind == ChangeKind::Confirmed {
        let summary = summary.ok_or_else(|| malformed("a confirmation without its order"))?;
        for (i, line) in summary.lines.iter().enumerate() {
            if line.product_id <= 0 || line.quantity <= 0 {
                return Err(malformed(format!(
                    "lines[{i}]: product {} x {} units",
                    line.product_id, line.quantity
                )));
            }
            lines.push((line.product_id, line.quantity));
        }
    }
    Ok(Some(OrderChange {
        order_id,
        day,
        kind,
        lines: merge_lines(lines),
        source: event.event_id,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ORDER: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    fn summary(lines: &[(i64, i64)]) -> events::OrderSummary {
        events::OrderSummary {
            lines: lines
                .iter()
                .map(|&(product_id, quantity)| events::EventLine {
                    product_id,
                    quantity,
                    ..Default::default()
                })
                .collect(),
            // 2023-11-14T22:13:20Z
            ordered_at: Some(time::to_proto(at(1_700_000_000))),
            ..Default::default()
        }
    }

    fn at(seconds: i64) -> chrono::NaiveDateTime {
        chrono::DateTime::from_timestamp(seconds, 0)
            .unwrap()
            .naive_utc()
    }

    fn encode(kind: Option<Kind>) -> Vec<u8> {
        events::OrderEvent {
            event_id: "e-1".to_owned(),
            order_id: ORDER.to_owned(),
            user_id: "u".to_owned(),
            occurred_at: Some(time::to_proto(at(1_800_000_000))),
            kind,
        }
        .encode_to_vec()
    }

    #[test]
    fn confirmations_count_their_merged_lines_on_the_placement_day() {
        let change = change_from_event(&encode(Some(Kind::Confirmed(events::OrderConfirmed {
            order: Some(summary(&[(3, 1), (1, 2), (3, 4)])),
        }))))
        .unwrap()
        .unwrap();
        assert_eq!(change.kind, ChangeKind::Confirmed);
        assert_eq!(change.order_id.as_str(), ORDER);
        assert_eq!(change.day.to_string(), "2023-11-14");
        assert_eq!(change.lines, vec![(1, 2), (3, 5)]);
        assert_eq!(change.source, "e-1");
    }

    #[test]
    fn shipping_changes_nothing_and_a_bare_rejection_uses_its_own_day() {
        let shipped = encode(Some(Kind::Shipped(events::OrderShipped {
            order: Some(summary(&[(1, 1)])),
        })));
        assert_eq!(change_from_event(&shipped).unwrap(), None);
        let rejected = change_from_event(&encode(Some(Kind::Rejected(events::OrderRejected {
            order: None,
            ..Default::default()
        }))))
        .unwrap()
        .unwrap();
        assert_eq!(rejected.kind, ChangeKind::Rejected);
        assert_eq!(rejected.day.to_string(), "2027-01-15");
    }

    #[test]
    fn entries_no_retry_can_read_are_malformed() {
        assert!(change_from_event(b"\xff\xff\xff").is_err());
        assert!(change_from_event(&encode(None)).is_err());
        let bad_line = encode(Some(Kind::Confirmed(events::OrderConfirmed {
            order: Some(summary(&[(1, 0)])),
        })));
        assert!(change_from_event(&bad_line).is_err());
        let bare = encode(Some(Kind::Confirmed(events::OrderConfirmed {
            order: None,
        })));
        assert!(change_from_event(&bare).is_err());
    }
}
