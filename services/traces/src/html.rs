//! The viewer's pages, rendered on the server: plain HTML and a little CSS,
//! no script. Everything a span brings (names, attributes, ids) is escaped.

use std::fmt::Write as _;

use crate::model::Trace;
use crate::render;
use crate::store::StoreStats;
use crate::tree::{self, TraceSummary};

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
a { color: #0b57d0; text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #f5f5f5; }
code, .tree, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
.tree { white-space: pre; }
.error { color: #b3261e; font-weight: bold; }
.muted { color: #777; }
.attrs { font-size: 12px; color: #444; }
.attrs span { margin-right: 1em; white-space: nowrap; }
.wf { position: relative; width: 260px; height: 12px; background: #f3f3f3; }
.bar { position: absolute; top: 0; height: 12px; background: #5b8def; min-width: 1px; }
.bar.err { background: #d9534f; }
form { margin: 1em 0; } input[type=text] { width: 28em; }
";

/// `text` made safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n\
         <p><a href=\"/\">commerce traces</a></p>\n{body}</body></html>\n",
        escape(title)
    )
}

/// The list of traces, with the search form (`query` its current text).
pub fn index(traces: &[TraceSummary], query: Option<&str>, stats: &StoreStats) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Traces</h1>\n<form method=\"get\" action=\"/\">\
         <input type=\"text\" name=\"q\" placeholder=\"trace id or saga id\" value=\"{}\"> \
         <button>Search</button></form>\n\
         <p class=\"muted\">Traces kept: {}, spans: {} (at most {}); evicted traces: {}, \
         dropped spans: {}. Most recently received first.</p>\n",
        escape(query.unwrap_or("")),
        stats.traces,
        stats.spans,
        stats.max_spans,
        stats.evicted_traces,
        stats.dropped_spans,
    );
    if traces.is_empty() {
        body.push_str(match query {
            Some(_) => "<p>No trace has this trace id or saga id.</p>\n",
            None => "<p>No traces received yet.</p>\n",
        });
        return page("Traces", &body);
    }
    body.push_str(
        "<table><tr><th>root span</th><th>services</th><th>spans</th><th>duration</th>\
         <th>started</th><th>saga</th><th>trace id</th></tr>\n",
    );
    for t in traces {
        let error = if t.error {
            " <span class=\"error\">error</span>"
        } else {
            ""
        };
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/traces/{id}\">{root}</a>{error}</td><td>{services}</td>\
             <td>{count}</td><td>{duration}</td><td>{start}</td><td class=\"mono\">{saga}</td>\
             <td class=\"mono\"><a href=\"/traces/{id}\">{id}</a></td></tr>",
            id = escape(&t.trace_id),
            root = escape(&t.root_name),
            services = escape(&t.services.join(", ")),
            count = t.span_count,
            duration = tree::millis(t.duration_nanos),
            start = tree::timestamp(t.start_unix_nano),
            saga = escape(&t.saga_ids.join(", ")),
        );
    }
    body.push_str("</table>\n");
    page("Traces", &body)
}

/// One trace: its summary, then its tree with a waterfall bar per span
/// (placed and sized against the whole trace), service, duration, status
/// and attributes.
pub fn trace(trace: &Trace) -> String {
    let summary = TraceSummary::of(trace);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{root}</h1>\n<p class=\"mono\">trace {id}</p>\n<p>{count} spans from {services}, \
         {duration}, started {start}",
        root = escape(&summary.root_name),
        id = escape(&summary.trace_id),
        count = summary.span_count,
        services = escape(&summary.services.join(", ")),
        duration = tree::millis(summary.duration_nanos),
        start = tree::timestamp(summary.start_unix_nano),
    );
    for saga in &summary.saga_ids {
        let _ = write!(
            body,
            "; saga <a class=\"mono\" href=\"/?q={}\">{}</a>",
            escape(&query_component(saga)),
            escape(saga)
        );
    }
    if summary.error {
        body.push_str(" <span class=\"error\">error</span>");
    }
    body.push_str("</p>\n");
    if summary.incomplete {
        body.push_str(
            "<p class=\"muted\">Some spans' parents have not been received (yet): \
             they are shown as roots.</p>\n",
        );
    }
    body.push_str(
        "<table><tr><th>span</th><th>waterfall</th><th>service</th><th>duration</th>\
         <th>status</th><th>attributes</th></tr>\n",
    );
    let start = summary.start_unix_nano;
    let total = summary.duration_nanos.max(1) as f64;
    let rows = tree::rows(&trace.spans);
    for (guide, row) in tree::guides(&rows).into_iter().zip(&rows) {
        let span = row.span;
        let offset = span.start_unix_nano.saturating_sub(start) as f64 / total * 100.0;
        let width = span.duration_nanos() as f64 / total * 100.0;
        let orphan = if row.orphan {
            " <span class=\"muted\">(parent not received)</span>"
        } else {
            ""
        };
        let status = if span.is_error() {
            format!(
                "<span class=\"error\">error</span> {}",
                escape(&span.status_message)
            )
        } else {
            span.status_text().to_owned()
        };
        let mut attributes = String::new();
        let key_first = render::key_attributes(span)
            .map(|(k, v)| -> (&str, &str) { (k, v) })
            .chain(
                span.attributes
                    .iter()
                    .filter(|(k, _)| !render::KEY_ATTRIBUTES.contains(&k.as_str()))
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        for (key, value) in key_first {
            let _ = write!(
                attributes,
                "<span><b>{}</b>={}</span>",
                escape(key),
                escape(value)
            );
        }
        for event in &span.events {
            let _ = write!(
                attributes,
                "<span>event +{}: {}</span>",
                tree::millis(event.time_unix_nano.saturating_sub(start)),
                escape(&event.name)
            );
        }
        let _ = writeln!(
            body,
            "<tr><td class=\"tree\" title=\"span {span_id}\">{guide}{name}{orphan}</td>\
             <td><div class=\"wf\"><div class=\"bar{err}\" style=\"left:{offset:.3}%;width:{width:.3}%\">\
             </div></div></td><td>{service}</td><td>{duration}</td><td>{status}</td>\
             <td class=\"attrs\">{attributes}</td></tr>",
            span_id = escape(&span.span_id),
            guide = escape(&guide),
            name = escape(&span.name),
            err = if span.is_error() { " err" } else { "" },
            service = escape(&span.service),
            duration = tree::millis(span.duration_nanos()),
        );
    }
    body.push_str("</table>\n");
    page(
        &format!("{} {}", summary.root_name, summary.trace_id),
        &body,
    )
}

/// The page of a trace id the store does not hold.
pub fn not_found(trace_id: &str) -> String {
    page(
        "Trace not found",
        &format!(
            "<h1>Trace not found</h1>\n<p>No span of trace <code>{}</code> has been received \
             (or it was evicted).</p>\n",
            escape(trace_id)
        ),
    )
}

/// `value` percent-encoded for a URL query.
fn query_component(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;

    #[test]
    fn everything_from_a_span_is_escaped() {
        let mut hostile = span(
            "t",
            "<script>alert(1)</script>",
            "",
            0,
            10,
            &[("saga_id", "\"><img src=x>"), ("note", "a&b")],
        );
        hostile.service = "<svc>".to_owned();
        let trace = Trace {
            trace_id: "t".to_owned(),
            spans: vec![hostile],
        };
        let page = super::trace(&trace);
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<svc>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("a&amp;b"));
        let list = index(
            &[TraceSummary::of(&trace)],
            Some("<q>"),
            &StoreStats::default(),
        );
        assert!(
            !list.contains("<script>alert") && !list.contains("<q>"),
            "{list}"
        );
    }

    #[test]
    fn the_trace_page_shows_the_tree_bars_and_attributes() {
        let trace = Trace {
            trace_id: "t".to_owned(),
            spans: vec![
                span("t", "saga", "", 0, 100, &[("saga_id", "s 1")]),
                span(
                    "t",
                    "reserve_stock",
                    "saga",
                    50,
                    100,
                    &[("step", "reserve_stock")],
                ),
            ],
        };
        let page = super::trace(&trace);
        assert!(page.contains("└ reserve_stock"), "{page}");
        assert!(page.contains("left:50.000%;width:50.000%"), "{page}");
        assert!(page.contains("<b>step</b>=reserve_stock"), "{page}");
        assert!(page.contains("href=\"/?q=s%201\""), "{page}");
    }
}
