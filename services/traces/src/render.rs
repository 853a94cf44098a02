//! A trace as text for the terminal (what `commerce-traces show` prints):
//! a header line, then one line per span drawn as a tree, with its
//! service, duration and the attributes that tell a saga's story.

use std::fmt::Write as _;

use crate::model::{SAGA_ID, SpanRecord, Trace};
use crate::tree::{self, Row, TraceSummary};

/// The attributes shown beside a span, in this order, when it has them.
pub const KEY_ATTRIBUTES: [&str; 10] = [
    SAGA_ID,
    "saga.kind",
    "step",
    "direction",
    "attempt",
    "outcome",
    "reason",
    "error",
    "fence",
    "driven",
];

/// Names (with their guides) wider than this push the columns out only for
/// their own line.
const MAX_NAME_COLUMN: usize = 72;

/// `trace` as a header line and its tree, one span a line.
pub fn text(trace: &Trace) -> String {
    let summary = TraceSummary::of(trace);
    let mut out = String::new();
    let _ = write!(
        out,
        "trace {}  {} spans  {}  {}  started {}",
        summary.trace_id,
        summary.span_count,
        summary.services.join(", "),
        tree::millis(summary.duration_nanos),
        tree::timestamp(summary.start_unix_nano),
    );
    if !summary.saga_ids.is_empty() {
        let _ = write!(out, "  saga {}", summary.saga_ids.join(", "));
    }
    if summary.error {
        out.push_str("  ERROR");
    }
    out.push('\n');

    let rows = tree::rows(&trace.spans);
    let names: Vec<String> = tree::guides(&rows)
        .into_iter()
        .zip(&rows)
        .map(|(guide, row)| guide + &row.span.name)
        .collect();
    let name_width = names
        .iter()
        .map(|n| n.chars().count())
        .filter(|&w| w <= MAX_NAME_COLUMN)
        .max()
        .unwrap_or(0);
    let service_width = rows.iter().map(|r| r.span.service.len()).max().unwrap_or(0);
    for (name, row) in names.iter().zip(&rows) {
        let pad = name_width.saturating_sub(name.chars().count());
        let _ = write!(
            out,
            "{name}{:pad$}  {:service_width$}  {:>11}",
            "",
            row.span.service,
            tree::millis(row.span.duration_nanos()),
        );
        let notes = notes(row);
        if !notes.is_empty() {
            let _ = write!(out, "  {}", notes.join(" "));
        }
        out.push('\n');
    }
    out
}

/// What a line says after the duration: key attributes (a saga id only
/// where its parent does not already say it), an error status, a missing
/// parent.
pub fn notes(row: &Row<'_>) -> Vec<String> {
    let mut notes: Vec<String> = key_attributes(row.span)
        .filter(|(key, value)| {
            *key != SAGA_ID || row.parent.and_then(SpanRecord::saga_id) != Some(*value)
        })
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if row.span.is_error() {
        notes.push(if row.span.status_message.is_empty() {
            "ERROR".to_owned()
        } else {
            format!("ERROR: {}", row.span.status_message)
        });
    }
    if row.orphan {
        notes.push("(parent not received)".to_owned());
    }
    notes
}

/// `span`'s attributes among [`KEY_ATTRIBUTES`], in that order.
pub fn key_attributes(span: &SpanRecord) -> impl Iterator<Item = (&'static str, &str)> {
    KEY_ATTRIBUTES
        .iter()
        .filter_map(|key| span.attribute(key).map(|value| (*key, value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;

    #[test]
    fn the_tree_is_drawn_with_services_durations_and_attributes() {
        let mut spans = vec![
            span("t", "PlaceOrder", "caller", 0, 9_000_000, &[]),
            span(
                "t",
                "saga PLACE_ORDER",
                "PlaceOrder",
                1_000_000,
                8_000_000,
                &[("saga_id", "s1"), ("saga.kind", "PLACE_ORDER")],
            ),
            span(
                "t",
                "reserve_stock",
                "saga PLACE_ORDER",
                2_000_000,
                4_000_000,
                &[
                    ("saga_id", "s1"),
                    ("step", "reserve_stock"),
                    ("direction", "FORWARD"),
                    ("attempt", "1"),
                    ("outcome", "SUCCEEDED"),
                ],
            ),
            span(
                "t",
                "ReserveStock",
                "reserve_stock",
                2_500_000,
                3_500_000,
                &[],
            ),
        ];
        spans[3].service = "product".to_owned();
        spans[3].status = crate::model::SpanStatus::Error;
        spans[3].status_message = "out of stock".to_owned();
        let text = text(&Trace {
            trace_id: "t".to_owned(),
            spans,
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("trace t  4 spans  orchestrator, product  9.00 ms"));
        assert!(lines[0].ends_with("saga s1  ERROR"), "{}", lines[0]);
        assert_eq!(
            &lines[1..],
            [
                "PlaceOrder          orchestrator      9.00 ms  (parent not received)",
                "└ saga PLACE_ORDER  orchestrator      7.00 ms  saga_id=s1 saga.kind=PLACE_ORDER",
                "  └ reserve_stock   orchestrator      2.00 ms  step=reserve_stock direction=FORWARD attempt=1 outcome=SUCCEEDED",
                "    └ ReserveStock  product           1.00 ms  ERROR: out of stock",
            ]
        );
    }
}
