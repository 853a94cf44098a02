//! A trace's spans as a tree, whatever order they arrived in: each span
//! under its parent, siblings by start time; a span whose parent was not
//! received is a root of its own, marked so. And a trace's summary, as the
//! list shows it. Pure functions over [`Trace`]; the HTML pages and the
//! terminal view both draw from [`rows`].

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{SpanRecord, Trace};

/// One line of the tree, in the order it is drawn (depth first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub span: &'a SpanRecord,
    /// The span's parent, if received.
    pub parent: Option<&'a SpanRecord>,
    /// 0 for a root.
    pub depth: usize,
    /// Whether no sibling follows it (roots included).
    pub last: bool,
    /// A root only because its parent was not received.
    pub orphan: bool,
}

/// The spans of a trace as tree rows, depth first, siblings (and roots) by
/// start time. Each span appears once, even in a (malformed) cycle of
/// parents, whose first span is then shown as an orphan root.
pub fn rows(spans: &[SpanRecord]) -> Vec<Row<'_>> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&spans[a], &spans[b]);
        (a.start_unix_nano, &a.name, &a.span_id).cmp(&(b.start_unix_nano, &b.name, &b.span_id))
    });
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for &i in &order {
        by_id.entry(spans[i].span_id.as_str()).or_insert(i);
    }
    let parent_of = |i: usize| -> Option<usize> {
        let parent = spans[i].parent_span_id.as_str();
        by_id.get(parent).copied().filter(|&p| p != i)
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for &i in &order {
        match parent_of(i) {
            Some(parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }

    let tree = Tree {
        spans,
        children,
        parents: (0..spans.len()).map(parent_of).collect(),
    };
    let mut rows = Vec::with_capacity(spans.len());
    let mut visited = vec![false; spans.len()];
    let count = roots.len();
    for (n, &root) in roots.iter().enumerate() {
        tree.walk(root, n + 1 == count, &mut visited, &mut rows);
    }
    // Spans only reachable through a cycle of parents.
    for &i in &order {
        if !visited[i] {
            if let Some(previous) = rows.iter_mut().rev().find(|r| r.depth == 0) {
                previous.last = false;
            }
            tree.walk(i, true, &mut visited, &mut rows);
        }
    }
    rows
}

/// The spans with their links, by index.
struct Tree<'a> {
    spans: &'a [SpanRecord],
    /// Each span's children, by start time.
    children: HashMap<usize, Vec<usize>>,
    /// Each span's parent, if received.
    parents: Vec<Option<usize>>,
}

impl<'a> Tree<'a> {
    /// Appends the rows of the subtree of `root` (a root of the drawing)
    /// not yet `visited`, depth first.
    fn walk(&self, root: usize, last: bool, visited: &mut [bool], rows: &mut Vec<Row<'a>>) {
        // Without recursion: a deep chain cannot overflow the stack.
        let mut stack = vec![(root, 0usize, last)];
        while let Some((i, depth, last)) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                continue;
            }
            let span = &self.spans[i];
            rows.push(Row {
                span,
                parent: self.parents[i]
                    .filter(|_| depth > 0)
                    .map(|p| &self.spans[p]),
                depth,
                last,
                orphan: depth == 0 && !span.parent_span_id.is_empty(),
            });
            if let Some(kids) = self.children.get(&i) {
                let count = kids.len();
                for (n, &kid) in kids.iter().enumerate().rev() {
                    stack.push((kid, depth + 1, n + 1 == count));
                }
            }
        }
    }
}

/// The guides to draw before each row's name: `├ `, `└ ` for the row
/// itself, `│ ` or blanks for the levels above it still going on.
pub fn guides(rows: &[Row<'_>]) -> Vec<String> {
    // For each depth, whether the ancestor at that depth has siblings after it.
    let mut open: Vec<bool> = Vec::new();
    rows.iter()
        .map(|row| {
            open.truncate(row.depth);
            let mut prefix = String::new();
            if row.depth > 0 {
                for &more in open.get(1..).unwrap_or_default() {
                    prefix.push_str(if more { "│ " } else { "  " });
                }
                prefix.push_str(if row.last { "└ " } else { "├ " });
            }
            open.push(!row.last);
            prefix
        })
        .collect()
}

/// A trace in a line of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The name of the earliest root span (a span without a parent, or else
    /// one whose parent was not received).
    pub root_name: String,
    /// The root's service.
    pub root_service: String,
    /// Servers in the trace, in the order they first appear.
    pub services: Vec<String>,
    pub span_count: usize,
    pub start_unix_nano: u64,
    /// From the first span's start to the last one's end.
    pub duration_nanos: u64,
    pub saga_ids: Vec<String>,
    /// Whether any span has an error status.
    pub error: bool,
    /// Whether some span's parent was not received (yet).
    pub incomplete: bool,
}

impl TraceSummary {
    pub fn of(trace: &Trace) -> Self {
        let spans = &trace.spans;
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let received = |s: &SpanRecord| ids.contains(s.parent_span_id.as_str());
        let root = earliest(spans.iter().filter(|s| s.parent_span_id.is_empty()))
            .or_else(|| earliest(spans.iter().filter(|s| !received(s))))
            .or_else(|| earliest(spans.iter()));
        let mut by_start: Vec<&SpanRecord> = spans.iter().collect();
        by_start.sort_by_key(|s| s.start_unix_nano);
        let mut services: Vec<String> = Vec::new();
        for span in &by_start {
            if !services.contains(&span.service) {
                services.push(span.service.clone());
            }
        }
        let saga_ids: BTreeSet<&str> = spans.iter().filter_map(SpanRecord::saga_id).collect();
        let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
        Self {
            trace_id: trace.trace_id.clone(),
            root_name: root.map(|s| s.name.clone()).unwrap_or_default(),
            root_service: root.map(|s| s.service.clone()).unwrap_or_default(),
            services,
            span_count: spans.len(),
            start_unix_nano: start,
            duration_nanos: end.saturating_sub(start),
            saga_ids: saga_ids.into_iter().map(str::to_owned).collect(),
            error: spans.iter().any(SpanRecord::is_error),
            incomplete: spans
                .iter()
                .any(|s| !s.parent_span_id.is_empty() && !received(s)),
        }
    }
}

fn earliest<'a>(spans: impl Iterator<Item = &'a SpanRecord>) -> Option<&'a SpanRecord> {
    spans.min_by_key(|s| (s.start_unix_nano, s.span_id.as_str()))
}

/// A duration in milliseconds, two decimals: `12.34 ms`.
pub fn millis(nanos: u64) -> String {
    format!("{:.2} ms", nanos as f64 / 1e6)
}

/// A time since the epoch as UTC, to the millisecond.
pub fn timestamp(unix_nano: u64) -> String {
    let nanos = i64::try_from(unix_nano).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
        .format("%Y-%m-%d %H:%M:%S%.3f UTC")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;

    /// (indented name, orphan) of each row.
    fn drawn(spans: &[SpanRecord]) -> Vec<String> {
        let rows = rows(spans);
        guides(&rows)
            .into_iter()
            .zip(&rows)
            .map(|(guide, row)| {
                let orphan = if row.orphan { " (orphan)" } else { "" };
                format!("{guide}{}{orphan}", row.span.name)
            })
            .collect()
    }

    fn saga() -> Vec<SpanRecord> {
        vec![
            span("t", "saga", "", 0, 100, &[("saga_id", "s1")]),
            span("t", "reserve", "saga", 10, 20, &[]),
            span("t", "stock", "reserve", 12, 18, &[]),
            span("t", "db", "stock", 13, 17, &[]),
            span("t", "deduct", "saga", 30, 40, &[]),
            span("t", "points", "deduct", 32, 38, &[]),
        ]
    }

    #[test]
    fn spans_nest_under_their_parents_by_start_time() {
        assert_eq!(
            drawn(&saga()),
            [
                "saga",
                "├ reserve",
                "│ └ stock",
                "│   └ db",
                "└ deduct",
                "  └ points",
            ]
        );
    }

    #[test]
    fn arrival_order_does_not_matter() {
        let mut reversed = saga();
        reversed.reverse();
        assert_eq!(drawn(&reversed), drawn(&saga()));
        let mut shuffled = saga();
        shuffled.rotate_left(3);
        shuffled.swap(0, 4);
        assert_eq!(drawn(&shuffled), drawn(&saga()));
    }

    #[test]
    fn a_span_whose_parent_never_came_is_an_orphan_root() {
        let mut spans = saga();
        spans.retain(|s| s.name != "reserve");
        assert_eq!(
            drawn(&spans),
            ["saga", "└ deduct", "  └ points", "stock (orphan)", "└ db",]
        );
        let summary = TraceSummary::of(&Trace {
            trace_id: "t".to_owned(),
            spans,
        });
        assert_eq!(summary.root_name, "saga");
        assert!(summary.incomplete);
    }

    #[test]
    fn several_roots_are_drawn_by_start_time() {
        let spans = vec![
            span("t", "late", "", 50, 60, &[]),
            span("t", "early", "", 0, 10, &[]),
            span("t", "child", "early", 1, 2, &[]),
        ];
        assert_eq!(drawn(&spans), ["early", "└ child", "late"]);
    }

    #[test]
    fn a_cycle_of_parents_shows_every_span_once() {
        let spans = vec![
            span("t", "a", "b", 0, 10, &[]),
            span("t", "b", "a", 1, 10, &[]),
            span("t", "c", "c", 2, 10, &[]),
        ];
        let drawn = drawn(&spans);
        assert_eq!(drawn.len(), 3, "{drawn:?}");
        assert!(drawn.contains(&"c (orphan)".to_owned()), "{drawn:?}");
    }

    #[test]
    fn the_summary_names_root_services_duration_saga_and_errors() {
        let mut spans = saga();
        spans[4].service = "point".to_owned();
        spans[5].service = "point".to_owned();
        spans[2].service = "product".to_owned();
        spans[5].status = crate::model::SpanStatus::Error;
        let summary = TraceSummary::of(&Trace {
            trace_id: "t".to_owned(),
            spans,
        });
        assert_eq!(summary.root_name, "saga");
        assert_eq!(summary.services, ["orchestrator", "product", "point"]);
        assert_eq!(summary.span_count, 6);
        assert_eq!(summary.duration_nanos, 100);
        assert_eq!(summary.saga_ids, ["s1"]);
        assert!(summary.error);
        assert!(!summary.incomplete);
    }
}
