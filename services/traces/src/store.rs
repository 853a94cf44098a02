//! The traces received, in memory, bounded by a number of spans: when a
//! batch takes the store over its bound, whole traces go, the one that
//! received a span the longest ago first (a trace still growing stays).
//! Found by trace id and by the `saga_id` attribute of any of their spans.
//!
//! Plain data, no locking: the receivers share it behind a mutex
//! ([`SharedStore`]) and hold the lock only to insert or copy out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::model::{SpanRecord, Trace};

/// The store as the receivers and the pages share it.
pub type SharedStore = Arc<Mutex<Store>>;

#[derive(Debug)]
pub struct Store {
    /// The bound on spans kept, all traces together.
    max_spans: usize,
    traces: HashMap<String, StoredTrace>,
    /// Trace ids by the sequence number of their latest span: the first
    /// entry is the next to evict, the last the most recently received.
    by_recency: BTreeMap<u64, String>,
    /// Trace ids by the saga ids their spans carry.
    by_saga: HashMap<String, BTreeSet<String>>,
    span_count: usize,
    /// Counts insertions, to order traces by recency.
    sequence: u64,
    stats: StoreStats,
}

#[derive(Debug)]
struct StoredTrace {
    spans: Vec<SpanRecord>,
    /// Position in `spans` by span id: a span sent twice is kept once.
    positions: HashMap<String, usize>,
    /// Its key in `by_recency`.
    sequence: u64,
    saga_ids: BTreeSet<String>,
}

/// What the store holds and what it had to let go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    pub traces: usize,
    pub spans: usize,
    pub max_spans: usize,
    /// Traces evicted to stay within the bound.
    pub evicted_traces: u64,
    /// Spans refused because their trace alone would pass the bound.
    pub dropped_spans: u64,
}

impl Store {
    /// A store keeping at most `max_spans` spans (at least one).
    pub fn new(max_spans: usize) -> Self {
        Self {
            max_spans: max_spans.max(1),
            traces: HashMap::new(),
            by_recency: BTreeMap::new(),
            by_saga: HashMap::new(),
            span_count: 0,
            sequence: 0,
            stats: StoreStats::default(),
        }
    }

    pub fn shared(max_spans: usize) -> SharedStore {
        Arc::new(Mutex::new(Self::new(max_spans)))
    }

    /// Keeps `spans` (of any traces, in any order; a span already kept is
    /// replaced), then evicts the least recently received traces until the
    /// bound holds again.
    pub fn insert(&mut self, spans: impl IntoIterator<Item = SpanRecord>) {
        for span in spans {
            self.insert_one(span);
        }
        while self.span_count > self.max_spans {
            let Some((_, oldest)) = self.by_recency.pop_first() else {
                break;
            };
            self.evict(&oldest);
        }
    }

    fn insert_one(&mut self, span: SpanRecord) {
        self.sequence += 1;
        let sequence = self.sequence;
        let trace = self
            .traces
            .entry(span.trace_id.clone())
            .or_insert_with(|| StoredTrace {
                spans: Vec::new(),
                positions: HashMap::new(),
                sequence,
                saga_ids: BTreeSet::new(),
            });
        self.by_recency.remove(&trace.sequence);
        trace.sequence = sequence;
        self.by_recency.insert(sequence, span.trace_id.clone());
        if let Some(saga_id) = span.saga_id()
            && trace.saga_ids.insert(saga_id.to_owned())
        {
            self.by_saga
                .entry(saga_id.to_owned())
                .or_default()
                .insert(span.trace_id.clone());
        }
        match trace.positions.get(&span.span_id) {
            Some(&at) => trace.spans[at] = span,
            None if trace.spans.len() >= self.max_spans => self.stats.dropped_spans += 1,
            None => {
                trace
                    .positions
                    .insert(span.span_id.clone(), trace.spans.len());
                trace.spans.push(span);
                self.span_count += 1;
            }
        }
    }

    fn evict(&mut self, trace_id: &str) {
        let Some(trace) = self.traces.remove(trace_id) else {
            return;
        };
        self.span_count -= trace.spans.len();
        self.stats.evicted_traces += 1;
        for saga_id in trace.saga_ids {
            if let Some(traces) = self.by_saga.get_mut(&saga_id) {
                traces.remove(trace_id);
                if traces.is_empty() {
                    self.by_saga.remove(&saga_id);
                }
            }
        }
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Option<Trace> {
        self.traces.get(trace_id).map(|t| Trace {
            trace_id: trace_id.to_owned(),
            spans: t.spans.clone(),
        })
    }

    /// Up to `limit` traces, the most recently received first.
    pub fn recent(&self, limit: usize) -> Vec<Trace> {
        self.by_recency
            .values()
            .rev()
            .take(limit)
            .filter_map(|id| self.trace(id))
            .collect()
    }

    /// Up to `limit` traces with a span of saga `saga_id`, the most
    /// recently received first.
    pub fn by_saga(&self, saga_id: &str, limit: usize) -> Vec<Trace> {
        let Some(ids) = self.by_saga.get(saga_id) else {
            return Vec::new();
        };
        let mut traces: Vec<(u64, &String)> = ids
            .iter()
            .filter_map(|id| self.traces.get(id).map(|t| (t.sequence, id)))
            .collect();
        traces.sort_unstable_by_key(|(sequence, _)| std::cmp::Reverse(*sequence));
        traces
            .into_iter()
            .take(limit)
            .filter_map(|(_, id)| self.trace(id))
            .collect()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            traces: self.traces.len(),
            spans: self.span_count,
            max_spans: self.max_spans,
            ..self.stats
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A span of `trace` named `id` (its span id too), under `parent` ("" for
    /// none), from `start` to `end` (ns), with attributes.
    pub(crate) fn span(
        trace: &str,
        id: &str,
        parent: &str,
        start: u64,
        end: u64,
        attributes: &[(&str, &str)],
    ) -> SpanRecord {
        SpanRecord {
            trace_id: trace.to_owned(),
            span_id: id.to_owned(),
            parent_span_id: parent.to_owned(),
            name: id.to_owned(),
            service: "orchestrator".to_owned(),
            kind: "INTERNAL".to_owned(),
            start_unix_nano: start,
            end_unix_nano: end,
            status: Default::default(),
            status_message: String::new(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            events: Vec::new(),
        }
    }

    fn ids(traces: &[Trace]) -> Vec<&str> {
        traces.iter().map(|t| t.trace_id.as_str()).collect()
    }

    #[test]
    fn traces_are_found_by_id_and_saga_newest_first() {
        let mut store = Store::new(100);
        store.insert([
            span("t1", "a", "", 0, 10, &[("saga_id", "s1")]),
            span("t2", "b", "", 0, 10, &[]),
        ]);
        store.insert([span("t3", "c", "", 0, 10, &[("saga_id", "s1")])]);
        assert_eq!(ids(&store.recent(10)), ["t3", "t2", "t1"]);
        assert_eq!(ids(&store.recent(2)), ["t3", "t2"]);
        assert_eq!(ids(&store.by_saga("s1", 10)), ["t3", "t1"]);
        assert!(store.by_saga("s2", 10).is_empty());
        assert_eq!(store.trace("t2").unwrap().spans.len(), 1);
        assert!(store.trace("t4").is_none());
    }

    #[test]
    fn a_span_sent_twice_is_kept_once() {
        let mut store = Store::new(100);
        store.insert([span("t1", "a", "", 0, 10, &[])]);
        store.insert([span("t1", "a", "", 0, 20, &[])]);
        let trace = store.trace("t1").unwrap();
        assert_eq!(trace.spans.len(), 1);
        assert_eq!(trace.spans[0].end_unix_nano, 20);
        assert_eq!(store.stats().spans, 1);
    }

    #[test]
    fn eviction_drops_whole_least_recently_received_traces() {
        let mut store = Store::new(4);
        store.insert([
            span("t1", "a", "", 0, 1, &[("saga_id", "s1")]),
            span("t1", "b", "a", 0, 1, &[]),
        ]);
        store.insert([
            span("t2", "c", "", 0, 1, &[]),
            span("t2", "d", "c", 0, 1, &[]),
        ]);
        // t1 grows again: t2 is now the least recently received.
        store.insert([span("t1", "e", "a", 0, 1, &[])]);
        let stats = store.stats();
        assert_eq!((stats.traces, stats.spans, stats.evicted_traces), (1, 3, 1));
        assert_eq!(ids(&store.recent(10)), ["t1"]);

        store.insert([
            span("t3", "f", "", 0, 1, &[]),
            span("t3", "g", "f", 0, 1, &[]),
        ]);
        assert_eq!(ids(&store.recent(10)), ["t3"]);
        assert!(
            store.by_saga("s1", 10).is_empty(),
            "the saga index forgets t1"
        );
        assert!(store.stats().spans <= 4);
    }

    #[test]
    fn a_trace_larger_than_the_bound_keeps_its_first_spans() {
        let mut store = Store::new(3);
        store.insert((0..5).map(|i| span("t1", &format!("s{i}"), "", 0, 1, &[])));
        let stats = store.stats();
        assert_eq!((stats.spans, stats.dropped_spans), (3, 2));
        assert_eq!(store.trace("t1").unwrap().spans.len(), 3);
    }
}
