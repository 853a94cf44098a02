//! "What TLS costs" in `report.md`: the levels run over mutual TLS set
//! against the same levels run again in plaintext (`--transport both`),
//! system by system and level by level: throughput, latency and CPU per
//! order by process, with the ratios TLS ÷ plaintext.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use super::markdown::{
    NA, fmt_cpu_ms, fmt_ms, fmt_rate, fmt_ratio, processes, table_row, table_rule,
};
use super::system_cpu_secs_per_order;
use crate::model::{LevelResult, Report, Transport};

/// One level measured both ways.
struct Pair<'a> {
    tls: &'a LevelResult,
    plaintext: &'a LevelResult,
}

impl Pair<'_> {
    /// `TLS / plaintext` of one measure, when plaintext's figure can divide.
    fn ratio(&self, measure: impl Fn(&LevelResult) -> f64) -> Option<f64> {
        let (tls, plaintext) = (measure(self.tls), measure(self.plaintext));
        (plaintext > 0.0 && tls.is_finite() && plaintext.is_finite()).then(|| tls / plaintext)
    }
}

/// Every plaintext level with its TLS twin (same scenario, system, clients
/// and instances), by clients then system.
fn pairs(report: &Report) -> Vec<Pair<'_>> {
    let mut pairs: Vec<Pair<'_>> = report
        .plaintext_levels
        .iter()
        .filter_map(|plaintext| {
            report
                .levels
                .iter()
                .find(|tls| {
                    tls.transport == Transport::Tls
                        && tls.scenario == plaintext.scenario
                        && tls.system == plaintext.system
                        && tls.concurrency == plaintext.concurrency
                        && tls.instances == plaintext.instances
                })
                .map(|tls| Pair { tls, plaintext })
        })
        .collect();
    pairs.sort_by_key(|p| (p.tls.concurrency, p.tls.system));
    pairs
}

/// Appends the section when the run measured both transports.
pub(super) fn section(md: &mut String, report: &Report) -> fmt::Result {
    let pairs = pairs(report);
    if pairs.is_empty() {
        return Ok(());
    }
    let scenarios: BTreeSet<&str> = pairs.iter().map(|p| p.tls.scenario.as_str()).collect();
    let scenarios: Vec<&str> = scenarios.into_iter().collect();
    writeln!(md, "## What TLS costs ({})", scenarios.join(", "))?;
    writeln!(md)?;
    writeln!(
        md,
        "The same orders run twice: first over mutual TLS (the tables above), then with \
         every system in plaintext (`--insecure-plaintext`), each pass on databases created \
         anew and processes started anew. Over TLS every gRPC call travels on a mutual TLS \
         connection whose caller presents its certificate, and every method is authorized \
         against the server's policy: the generator's calls to the orchestrator, the \
         baseline, dtm's TC and the catalogue (as the BFF) and its coupon quotes for dtm \
         (as the orchestrator), the orchestrator's calls to the participants, and dtm's \
         branch calls to them (dtm's own calls to its branch endpoints stay plain HTTP \
         inside its process). Connections are long-lived (the generator opens a few per \
         level), so this is mostly the cost per call of encryption and authorization, \
         not of handshakes. \
         Ratios are TLS ÷ plaintext; CPU is the system's (every process but the load \
         generator), in milliseconds per order. One pass each, TLS first: differences \
         of a few percent are within what repeated runs vary by."
    )?;
    writeln!(md)?;
    table_row(
        md,
        &[
            "clients",
            "system",
            "orders/s TLS",
            "orders/s plaintext",
            "throughput TLS/plaintext",
            "p50 ms TLS / plaintext",
            "p99 ms TLS / plaintext",
            "p99 TLS/plaintext",
            "CPU ms/order TLS",
            "CPU ms/order plaintext",
            "CPU ms/order added by TLS",
        ],
    )?;
    table_rule(md, 11)?;
    for pair in &pairs {
        let (tls, plaintext) = (pair.tls, pair.plaintext);
        let added = system_cpu_secs_per_order(tls) - system_cpu_secs_per_order(plaintext);
        table_row(
            md,
            &[
                &tls.concurrency.to_string(),
                tls.system.label(),
                &fmt_rate(tls.throughput),
                &fmt_rate(plaintext.throughput),
                &fmt_ratio(pair.ratio(|l| l.throughput)),
                &format!(
                    "{} / {}",
                    fmt_ms(tls.latency.p50),
                    fmt_ms(plaintext.latency.p50)
                ),
                &format!(
                    "{} / {}",
                    fmt_ms(tls.latency.p99),
                    fmt_ms(plaintext.latency.p99)
                ),
                &fmt_ratio(pair.ratio(|l| l.latency.p99)),
                &fmt_cpu_ms(system_cpu_secs_per_order(tls)),
                &fmt_cpu_ms(system_cpu_secs_per_order(plaintext)),
                &format!("{:+.3}", added * 1_000.0),
            ],
        )?;
    }
    writeln!(md)?;
    cpu_by_process(md, &pairs)
}

/// CPU per order of each process, TLS / plaintext, so a reader sees which
/// process pays for TLS.
fn cpu_by_process(md: &mut String, pairs: &[Pair<'_>]) -> fmt::Result {
    let processes = processes(pairs.iter().flat_map(|p| [p.tls, p.plaintext]));
    writeln!(
        md,
        "CPU milliseconds per order by process, TLS / plaintext (the generator's too: it \
         encrypts as well). \"–\": the process is not part of that system."
    )?;
    writeln!(md)?;
    let mut header = vec!["clients", "system"];
    header.extend(processes.iter().copied());
    table_row(md, &header)?;
    table_rule(md, header.len())?;
    for pair in pairs {
        let mut row = vec![
            pair.tls.concurrency.to_string(),
            pair.tls.system.label().to_owned(),
        ];
        row.extend(processes.iter().map(|process| {
            let tls = pair.tls.cpu_secs_per_order.get(*process);
            let plaintext = pair.plaintext.cpu_secs_per_order.get(*process);
            match (tls, plaintext) {
                (None, None) => "–".to_owned(),
                (tls, plaintext) => format!(
                    "{} / {}",
                    tls.map_or_else(|| NA.to_owned(), |s| fmt_cpu_ms(*s)),
                    plaintext.map_or_else(|| NA.to_owned(), |s| fmt_cpu_ms(*s))
                ),
            }
        }));
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        table_row(md, &cells)?;
    }
    writeln!(md)
}
