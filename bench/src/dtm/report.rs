//! The dtm peer in `report.md`: per scenario and level, dtm's throughput,
//! latency, commits and CPU per order by process, set against the saga (and
//! the baseline) of the same level of the same run, with the ratios
//! saga ÷ dtm for throughput and p99.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use super::Dtm;
use crate::model::{LevelResult, ScenarioResult, System};

/// Processes of the dtm system, in the order a reader follows an order.
const PROCESSES: [&str; 6] = ["dtm", "product", "point", "coupon", "mariadb", "generator"];

fn find<'a>(
    levels: &'a [LevelResult],
    scenario: &str,
    concurrency: usize,
    system: System,
) -> Option<&'a LevelResult> {
    levels
        .iter()
        .find(|l| l.scenario == scenario && l.concurrency == concurrency && l.system == system)
}

/// `saga / dtm` of one measure, when both ran and dtm's figure can divide.
pub fn ratio(
    saga: Option<&LevelResult>,
    dtm: &LevelResult,
    measure: fn(&LevelResult) -> f64,
) -> Option<f64> {
    let (s, d) = (measure(saga?), measure(dtm));
    (d > 0.0 && s.is_finite() && d.is_finite()).then(|| s / d)
}

/// CPU seconds per order of the system (every process but the generator).
fn system_cpu(level: &LevelResult) -> f64 {
    level
        .cpu_secs_per_order
        .iter()
        .filter(|(p, _)| p.as_str() != "generator")
        .map(|(_, s)| s)
        .sum()
}

/// The ratios of one scenario as a result of its own (so `report.json`
/// has them): per level, saga ÷ dtm and saga ÷ baseline for throughput and
/// p99, dtm's throughput and p99, and the status polls dtm's orders took.
/// None when dtm did not run.
pub fn peer(scenario: &str, levels: &[LevelResult], dtm: &Dtm) -> Option<ScenarioResult> {
    let runs: Vec<&LevelResult> = levels
        .iter()
        .filter(|l| l.scenario == scenario && l.system == System::Dtm)
        .collect();
    if runs.is_empty() {
        return None;
    }
    let polls = dtm.polls_per_order();
    let mut figures = BTreeMap::new();
    for (i, d) in runs.iter().enumerate() {
        let c = d.concurrency;
        let saga = find(levels, scenario, c, System::Saga);
        let base = find(levels, scenario, c, System::Baseline);
        let mut put = |name: &str, value: Option<f64>| {
            if let Some(value) = value {
                figures.insert(format!("{c:>4} clients: {name}"), value);
            }
        };
        put("dtm orders/s", Some(d.throughput));
        put("dtm p50 ms", Some(d.latency.p50));
        put("dtm p99 ms", Some(d.latency.p99));
        put("throughput saga/dtm", ratio(saga, d, |l| l.throughput));
        put("p99 saga/dtm", ratio(saga, d, |l| l.latency.p99));
        put(
            "throughput saga/baseline",
            base.and_then(|b| ratio(saga, b, |l| l.throughput)),
        );
        put(
            "p99 saga/baseline",
            base.and_then(|b| ratio(saga, b, |l| l.latency.p99)),
        );
        put("dtm CPU ms/order", Some(system_cpu(d) * 1e3));
        put("dtm status polls/order", polls.get(i).copied());
    }
    Some(ScenarioResult {
        name: format!("dtm_peer_{scenario}"),
        description: format!(
            "the {scenario} orders through dtm (dtmrs {DTMRS_VERSION}) next to the saga and \
             the baseline: ratios saga ÷ dtm (throughput above 1 and p99 below 1: the saga \
             is ahead)"
        ),
        figures,
        checks: Vec::new(),
    })
}

/// Appends the dtm section when the run has dtm levels.
pub fn section(md: &mut String, levels: &[LevelResult]) -> fmt::Result {
    let dtm: Vec<&LevelResult> = levels.iter().filter(|l| l.system == System::Dtm).collect();
    if dtm.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Peer: the same saga coordinated by dtm (dtmrs)")?;
    writeln!(md)?;
    writeln!(
        md,
        "**dtm**: the same order as a dtm saga, coordinated by the dtmrs TC (crate \
         `dtmrs` {}, MySQL store on its own database, leased driver, inline driving \
         of submitted sagas) over the same product, point and coupon services, its \
         branches translated to our participant RPCs by HTTP endpoints in the TC's \
         process. The client prices the order first (catalogue prices, coupon quote), \
         submits the saga and polls dtm until it is final; latency is end to end. \
         Ratios are saga ÷ dtm at the same level of this run: throughput above 1× \
         and p99 below 1× mean the saga is ahead.",
        DTMRS_VERSION
    )?;
    writeln!(md)?;
    row(
        md,
        &[
            "scenario",
            "concurrency",
            "saga orders/s",
            "dtm orders/s",
            "baseline orders/s",
            "throughput saga/dtm",
            "saga p50 / p99 ms",
            "dtm p50 / p95 / p99 / max ms",
            "p99 saga/dtm",
            "commits/order dtm",
            "CPU ms/order saga / dtm",
            "dtm confirmed / rejected / failed",
        ],
    )?;
    writeln!(md, "|{}", " --- |".repeat(12))?;
    for d in &dtm {
        let saga = find(levels, &d.scenario, d.concurrency, System::Saga);
        let base = find(levels, &d.scenario, d.concurrency, System::Baseline);
        let na = || "n/a".to_owned();
        row(
            md,
            &[
                &d.scenario,
                &d.concurrency.to_string(),
                &saga.map_or_else(na, |l| format!("{:.0}", l.throughput)),
                &format!("{:.0}", d.throughput),
                &base.map_or_else(na, |l| format!("{:.0}", l.throughput)),
                &fmt_ratio(ratio(saga, d, |l| l.throughput)),
                &saga.map_or_else(na, |l| {
                    format!("{:.1} / {:.1}", l.latency.p50, l.latency.p99)
                }),
                &format!(
                    "{:.1} / {:.1} / {:.1} / {:.1}",
                    d.latency.p50, d.latency.p95, d.latency.p99, d.latency.max
                ),
                &fmt_ratio(ratio(saga, d, |l| l.latency.p99)),
                &format!("{:.2}", d.commits_per_order),
                &format!(
                    "{} / {:.3}",
                    saga.map_or_else(na, |l| format!("{:.3}", system_cpu(l) * 1e3)),
                    system_cpu(d) * 1e3
                ),
                &format!("{} / {} / {}", d.confirmed, d.rejected, d.failed),
            ],
        )?;
    }
    writeln!(md)?;

    let processes = crate::report::processes_in_order(&PROCESSES, dtm.iter().copied());
    writeln!(
        md,
        "dtm's CPU milliseconds per order by process (`dtm` is the TC with its branch \
         endpoints; the generator's share includes the pricing and the status polls)."
    )?;
    writeln!(md)?;
    let mut header = vec!["scenario", "concurrency"];
    header.extend(processes.iter().copied());
    header.push("total (system)");
    row(md, &header)?;
    writeln!(md, "|{}", " --- |".repeat(header.len()))?;
    for d in &dtm {
        let mut cells = vec![d.scenario.clone(), d.concurrency.to_string()];
        cells.extend(processes.iter().map(|p| {
            d.cpu_secs_per_order
                .get(*p)
                .map_or_else(|| "–".to_owned(), |s| format!("{:.3}", s * 1e3))
        }));
        cells.push(format!("{:.3}", system_cpu(d) * 1e3));
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        row(md, &cells)?;
    }
    writeln!(md)
}

/// The dtmrs version the benchmark is built with (Cargo.lock pins it).
const DTMRS_VERSION: &str = "0.13";

fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}×"))
}

fn row(md: &mut String, cells: &[&str]) -> fmt::Result {
    md.push('|');
    for cell in cells {
        write!(md, " {} |", cell.replace('|', "\\|"))?;
    }
    md.push('\n');
    Ok(())
}
