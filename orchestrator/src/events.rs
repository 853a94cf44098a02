//! Order events as published: built from an outbox row and its order as
//! committed (an order's lines and amounts are final once it leaves
//! PENDING, so any later read of the order says what the event must say).

use commerce_platform::error::ServiceError;
use commerce_platform::time::to_proto;
use commerce_proto::events::v1 as ev;

use crate::domain::order::{OrderEventKind, ordered_at};
use crate::store::{OrderRecord, PendingEvent};

/// The event of `pending`, ready to encode.
pub fn order_event(pending: &PendingEvent) -> Result<ev::OrderEvent, ServiceError> {
    let kind = OrderEventKind::parse(&pending.row.kind)?;
    let record = OrderRecord::from_row(pending.order.clone())?;
    let order = &record.order;
    let summary = ev::OrderSummary {
        lines: record
            .lines
            .iter()
            .map(|l| {
                let unit_price = l.unit_price.unwrap_or(0);
                ev::EventLine {
                    product_id: l.product_id,
                    quantity: l.quantity,
                    product_name: l.product_name.clone().unwrap_or_default(),
                    brand_id: l.brand_id.unwrap_or(0),
                    brand_name: l.brand_name.clone().unwrap_or_default(),
                    unit_price,
                    line_total: unit_price.saturating_mul(l.quantity),
                }
            })
            .collect(),
        subtotal: order.subtotal,
        discount: order.discount,
        points_paid: order.points_paid,
        user_coupon_id: order.user_coupon_id,
        // The order id's own time (see `ordered_at`); the row's creation
        // time for an id that carries none.
        ordered_at: Some(to_proto(ordered_at(&order.id).unwrap_or(order.created_at))),
        saga_id: order.saga_id.clone(),
    };
    let kind = match kind {
        OrderEventKind::Confirmed => ev::order_event::Kind::Confirmed(ev::OrderConfirmed {
            order: Some(summary),
        }),
        OrderEventKind::Rejected => ev::order_event::Kind::Rejected(ev::OrderRejected {
            order: Some(summary),
            reason: order.reason.clone(),
            reason_message: order.reason_message.clone(),
        }),
        OrderEventKind::Cancelled => ev::order_event::Kind::Cancelled(ev::OrderCancelled {
            // The cancel saga refunds exactly the USE entry of the placing
            // saga, which is what the order paid.
            points_refunded: order.points_paid,
            coupon_restored: order.user_coupon_id,
            order: Some(summary),
        }),
        OrderEventKind::Shipped => ev::order_event::Kind::Shipped(ev::OrderShipped {
            order: Some(summary),
        }),
        OrderEventKind::Delivered => ev::order_event::Kind::Delivered(ev::OrderDelivered {
            order: Some(summary),
        }),
    };
    Ok(ev::OrderEvent {
        event_id: pending.row.event_id.clone(),
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        occurred_at: Some(to_proto(pending.row.occurred_at)),
        kind: Some(kind),
    })
}

/// The `type` field of a stream entry: the kind's message name.
pub fn type_name(event: &ev::OrderEvent) -> &'static str {
    match event.kind {
        Some(ev::order_event::Kind::Confirmed(_)) => OrderEventKind::Confirmed.as_str(),
        Some(ev::order_event::Kind::Rejected(_)) => OrderEventKind::Rejected.as_str(),
        Some(ev::order_event::Kind::Cancelled(_)) => OrderEventKind::Cancelled.as_str(),
        Some(ev::order_event::Kind::Shipped(_)) => OrderEventKind::Shipped.as_str(),
        Some(ev::order_event::Kind::Delivered(_)) => OrderEventKind::Delivered.as_str(),
        None => "OrderEvent",
    }
}

/// The event as one JSON object (for operators' tools: `commerce-mesh
/// events tail`), field names as in the proto.
pub fn to_json(event: &ev::OrderEvent) -> serde_json::Value {
    use serde_json::json;
    let time = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    let summary = |s: Option<&ev::OrderSummary>| {
        s.map(|s| {
            json!({
                "lines": s.lines.iter().map(|l| json!({
                    "product_id": l.product_id,
                    "quantity": l.quantity,
                    "product_name": l.product_name,
                    "brand_id": l.brand_id,
                    "brand_name": l.brand_name,
                    "unit_price": l.unit_price,
                    "line_total": l.line_total,
                })).collect::<Vec<_>>(),
                "subtotal": s.subtotal,
                "discount": s.discount,
                "points_paid": s.points_paid,
                "user_coupon_id": s.user_coupon_id,
                "ordered_at": time(s.ordered_at.as_ref()),
                "saga_id": s.saga_id,
            })
        })
    };
    let mut out = json!({
        "type": type_name(event),
        "event_id": event.event_id,
        "order_id": event.order_id,
        "user_id": event.user_id,
        "occurred_at": time(event.occurred_at.as_ref()),
    });
    let details = match &event.kind {
        Some(ev::order_event::Kind::Confirmed(e)) => json!({ "order": summary(e.order.as_ref()) }),
        Some(ev::order_event::Kind::Rejected(e)) => json!({
            "order": summary(e.order.as_ref()),
            "reason": e.reason,
            "reason_message": e.reason_message,
        }),
        Some(ev::order_event::Kind::Cancelled(e)) => json!({
            "order": summary(e.order.as_ref()),
            "points_refunded": e.points_refunded,
            "coupon_restored": e.coupon_restored,
        }),
        Some(ev::order_event::Kind::Shipped(e)) => json!({ "order": summary(e.order.as_ref()) }),
        Some(ev::order_event::Kind::Delivered(e)) => json!({ "order": summary(e.order.as_ref()) }),
        None => json!({}),
    };
    if let (Some(out), serde_json::Value::Object(details)) = (out.as_object_mut(), details) {
        out.extend(details);
    }
    out
}
