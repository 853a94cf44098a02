//! `report.md`: the run, the systems side by side at each load level, the
//! verdict on the targets and each scenario's findings.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use super::charts::Charts;
use super::fast_paths;
use super::targets;
use super::transport;
use super::{
    GENERATOR_PROCESS, INSTANCES_SCENARIO, LevelPair, ScenarioLevels, system_cpu_secs_per_order,
};
use crate::model::{LevelResult, Report, ScenarioResult};

/// The processes in the order a reader expects them: the saga's path, the
/// baseline, the database, then the harness. Others follow alphabetically.
const PROCESS_ORDER: [&str; 8] = [
    "orchestrator",
    "product",
    "point",
    "coupon",
    "baseline",
    "dtm",
    "mariadb",
    GENERATOR_PROCESS,
];

/// The scenario the outbox's lag is measured under.
const UNIFORM_SCENARIO: &str = "uniform";

pub(super) const NA: &str = "n/a";

pub(super) fn render(
    report: &Report,
    groups: &[ScenarioLevels<'_>],
    charts: Option<&Charts>,
) -> Result<String, fmt::Error> {
    let mut md = String::new();
    writeln!(
        md,
        "# Commerce benchmark: saga mesh vs one-transaction baseline"
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "PlaceOrder driven against two systems: **saga** (the orchestrator and the \
         product, point and coupon services, four steps over gRPC) and **baseline** \
         (the same order as one MySQL transaction in one server)."
    )?;
    writeln!(md)?;
    run_info(&mut md, report)?;
    for group in groups {
        level_tables(&mut md, group)?;
        if group.scenario == UNIFORM_SCENARIO {
            fast_paths::outbox_section(&mut md, &report.outbox_lag)?;
        }
    }
    if !groups.iter().any(|g| g.scenario == UNIFORM_SCENARIO) {
        fast_paths::outbox_section(&mut md, &report.outbox_lag)?;
    }
    transport::section(&mut md, report)?;
    crate::dtm::report::section(&mut md, &report.levels)?;
    instances_section(&mut md, report)?;
    for comparison in &report.fast_paths {
        fast_paths::comparison_section(&mut md, comparison)?;
    }
    if let Some(charts) = charts {
        chart_section(&mut md, groups, charts)?;
    }
    targets_section(&mut md, report, groups)?;
    for scenario in &report.scenarios {
        scenario_section(&mut md, scenario)?;
    }
    Ok(md)
}

fn run_info(md: &mut String, report: &Report) -> fmt::Result {
    let run = &report.run;
    writeln!(md, "## Run")?;
    writeln!(md)?;
    writeln!(md, "- Started: {}", or_unknown(&run.started_at))?;
    writeln!(
        md,
        "- Machine: {} CPUs ({}), {:.1} GiB memory",
        run.cpus,
        or_unknown(&run.cpu_model),
        run.memory_gib
    )?;
    writeln!(md, "- Database: {}", or_unknown(&run.database))?;
    writeln!(md, "- Build profile: {}", or_unknown(&run.profile))?;
    writeln!(md, "- Transport: {}", or_unknown(&run.transport))?;
    writeln!(md, "- Command:")?;
    writeln!(md)?;
    writeln!(md, "  ```sh")?;
    writeln!(md, "  {}", run.command)?;
    writeln!(md, "  ```")?;
    writeln!(md)
}

fn level_tables(md: &mut String, group: &ScenarioLevels<'_>) -> fmt::Result {
    writeln!(md, "## Load: {}", group.scenario)?;
    writeln!(md)?;
    writeln!(
        md,
        "One row per number of concurrent clients. Throughput counts answered orders \
         (confirmed or rejected) per second. Ratios are saga ÷ baseline at the same \
         level of this run: above 1× the saga has more throughput, or a longer p99. \
         Commits are MySQL commits (all databases) per order. CPU is the system's \
         (every process but the load generator), in milliseconds per order. Outcomes \
         are confirmed / rejected / failed orders (failed: errors and orders left \
         pending). \"n/a\": that system did not run at that level."
    )?;
    writeln!(md)?;
    table_row(
        md,
        &[
            "concurrency",
            "saga orders/s",
            "baseline orders/s",
            "throughput saga/baseline",
            "saga p50 / p95 / p99 / max ms",
            "baseline p99 ms",
            "p99 saga/baseline",
            "commits/order saga",
            "commits/order baseline",
            "CPU ms/order saga",
            "CPU ms/order baseline",
            "saga confirmed / rejected / failed",
            "baseline confirmed / rejected / failed",
        ],
    )?;
    table_rule(md, 13)?;
    for pair in &group.pairs {
        level_row(md, pair)?;
    }
    writeln!(md)?;
    cpu_split_table(md, group)?;
    let levels: Vec<&LevelResult> = group
        .pairs
        .iter()
        .flat_map(|p| [p.saga, p.baseline, p.dtm])
        .flatten()
        .collect();
    statements_table(md, group.scenario, &levels)
}

/// MariaDB's global status counters per order, as the statements table shows
/// them: (counter, column). See docs/benchmarks.md for what each counts.
const DB_COLUMNS: [(&str, &str); 14] = [
    ("Questions", "statements"),
    ("Com_stmt_prepare", "prepare"),
    ("Com_stmt_close", "close"),
    ("Com_stmt_execute", "execute"),
    ("Com_select", "SELECT"),
    ("Com_insert", "INSERT"),
    ("Com_update", "UPDATE"),
    ("Com_delete", "DELETE"),
    ("Com_replace", "REPLACE"),
    ("Com_begin", "BEGIN"),
    ("Com_commit", "COMMIT"),
    ("Com_rollback", "ROLLBACK"),
    ("Bytes_received", "KB to db"),
    ("Bytes_sent", "KB from db"),
];

/// Statements per order by kind, and bytes to and from the database.
fn statements_table(md: &mut String, scenario: &str, levels: &[&LevelResult]) -> fmt::Result {
    if levels.iter().all(|l| l.db_per_order.is_empty()) {
        return Ok(());
    }
    writeln!(
        md,
        "Statements per order ({scenario}), from MariaDB's global status counters before \
         and after each level (all databases; the harness's own readings left out). \
         \"statements\" is `Questions`: every statement a client sent, prepared or not \
         (prepare and close of a prepared statement are not in it); prepare / close / \
         execute are the binary protocol's `Com_stmt_*`; SELECT ... ROLLBACK are \
         `Com_<kind>`, which count a statement of that kind whether it was sent as text \
         or executed as a prepared statement (so an execute also counts in its kind). \
         KB to / from the database: `Bytes_received` / `Bytes_sent` of the server."
    )?;
    writeln!(md)?;
    let mut header = vec!["concurrency", "system"];
    header.extend(DB_COLUMNS.iter().map(|(_, title)| *title));
    table_row(md, &header)?;
    table_rule(md, header.len())?;
    for level in levels {
        let mut row = vec![level.concurrency.to_string(), system_label(level)];
        row.extend(DB_COLUMNS.iter().map(|(counter, _)| {
            level.db_per_order.get(*counter).map_or_else(
                || NA.to_owned(),
                |v| {
                    if counter.starts_with("Bytes") {
                        format!("{:.2}", v / 1_024.0)
                    } else {
                        format!("{v:.2}")
                    }
                },
            )
        }));
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        table_row(md, &cells)?;
    }
    writeln!(md)
}

/// "saga", "baseline", or "saga ×2" for two orchestrator instances.
fn system_label(level: &LevelResult) -> String {
    if level.instances > 1 {
        format!("{} ×{}", level.system.label(), level.instances)
    } else {
        level.system.label().to_owned()
    }
}

/// The `instances` scenario: the saga on 1, 2, 4, ... orchestrator
/// instances sharing one database, each count set against one instance at
/// the same number of clients.
fn instances_section(md: &mut String, report: &Report) -> fmt::Result {
    let mut levels: Vec<&LevelResult> = report
        .levels
        .iter()
        .filter(|l| l.scenario == INSTANCES_SCENARIO)
        .collect();
    if levels.is_empty() {
        return Ok(());
    }
    levels.sort_by_key(|l| (l.concurrency, l.instances));
    writeln!(md, "## Load: {INSTANCES_SCENARIO} (orchestrator instances)")?;
    writeln!(md)?;
    writeln!(
        md,
        "The uniform load on several orchestrator instances sharing one database (each \
         its own process with its own instance id, the same participants), the \
         generator's clients spread round-robin over them; saga only. Ratios are against \
         one instance at the same number of clients in this run. CPU in milliseconds per \
         order: all orchestrator instances together, the participants, MariaDB, and the \
         system's total (every process but the load generator)."
    )?;
    writeln!(md)?;
    table_row(
        md,
        &[
            "instances",
            "clients",
            "orders/s",
            "throughput vs 1 instance",
            "p50 / p99 ms",
            "p99 vs 1 instance",
            "CPU ms/order orchestrators",
            "product",
            "point",
            "coupon",
            "mariadb",
            "total (system)",
            "statements/order",
            "confirmed / rejected / failed",
        ],
    )?;
    table_rule(md, 14)?;
    for level in &levels {
        let one = levels
            .iter()
            .find(|l| l.concurrency == level.concurrency && l.instances == 1);
        let ratio = |measure: &dyn Fn(&LevelResult) -> f64| {
            one.and_then(|one| {
                let base = measure(one);
                (base > 0.0).then(|| measure(level) / base)
            })
        };
        let cpu = |process: &str| {
            level
                .cpu_secs_per_order
                .get(process)
                .map_or_else(|| NA.to_owned(), |s| fmt_cpu_ms(*s))
        };
        let orchestrators: f64 = level
            .cpu_secs_per_order
            .iter()
            .filter(|(p, _)| p.starts_with("orchestrator"))
            .map(|(_, s)| s)
            .sum();
        table_row(
            md,
            &[
                &level.instances.to_string(),
                &level.concurrency.to_string(),
                &fmt_rate(level.throughput),
                &fmt_ratio(ratio(&|l| l.throughput)),
                &format!(
                    "{} / {}",
                    fmt_ms(level.latency.p50),
                    fmt_ms(level.latency.p99)
                ),
                &fmt_ratio(ratio(&|l| l.latency.p99)),
                &fmt_cpu_ms(orchestrators),
                &cpu("product"),
                &cpu("point"),
                &cpu("coupon"),
                &cpu("mariadb"),
                &fmt_cpu_ms(system_cpu_secs_per_order(level)),
                &level
                    .db_per_order
                    .get("Questions")
                    .map_or_else(|| NA.to_owned(), |q| format!("{q:.2}")),
                &format!(
                    "{} / {} / {}",
                    thousands(level.confirmed),
                    thousands(level.rejected),
                    thousands(level.failed)
                ),
            ],
        )?;
    }
    writeln!(md)?;
    // Each instance's own share.
    let mut processes: Vec<&str> = levels
        .iter()
        .flat_map(|l| l.cpu_secs_per_order.keys().map(String::as_str))
        .filter(|p| p.starts_with("orchestrator"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    processes.sort_by_key(|p| (p.len(), *p));
    writeln!(
        md,
        "CPU milliseconds per order of each orchestrator instance ({INSTANCES_SCENARIO})."
    )?;
    writeln!(md)?;
    let mut header = vec!["instances", "clients"];
    header.extend(processes.iter().copied());
    table_row(md, &header)?;
    table_rule(md, header.len())?;
    for level in &levels {
        let mut row = vec![level.instances.to_string(), level.concurrency.to_string()];
        row.extend(processes.iter().map(|p| {
            level
                .cpu_secs_per_order
                .get(*p)
                .map_or_else(|| "–".to_owned(), |s| fmt_cpu_ms(*s))
        }));
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        table_row(md, &cells)?;
    }
    writeln!(md)?;
    statements_table(md, INSTANCES_SCENARIO, &levels)
}

fn level_row(md: &mut String, pair: &LevelPair<'_>) -> fmt::Result {
    let saga = pair.saga;
    let baseline = pair.baseline;
    let each = |side: Option<&LevelResult>, show: &dyn Fn(&LevelResult) -> String| {
        side.map_or_else(|| NA.to_owned(), show)
    };
    let outcomes = |l: &LevelResult| {
        format!(
            "{} / {} / {}",
            thousands(l.confirmed),
            thousands(l.rejected),
            thousands(l.failed)
        )
    };
    table_row(
        md,
        &[
            &pair.concurrency.to_string(),
            &each(saga, &|l| fmt_rate(l.throughput)),
            &each(baseline, &|l| fmt_rate(l.throughput)),
            &fmt_ratio(pair.ratio(|l| l.throughput)),
            &each(saga, &|l| {
                let t = &l.latency;
                format!(
                    "{} / {} / {} / {}",
                    fmt_ms(t.p50),
                    fmt_ms(t.p95),
                    fmt_ms(t.p99),
                    fmt_ms(t.max)
                )
            }),
            &each(baseline, &|l| fmt_ms(l.latency.p99)),
            &fmt_ratio(pair.ratio(|l| l.latency.p99)),
            &each(saga, &|l| format!("{:.2}", l.commits_per_order)),
            &each(baseline, &|l| format!("{:.2}", l.commits_per_order)),
            &each(saga, &|l| fmt_cpu_ms(system_cpu_secs_per_order(l))),
            &each(baseline, &|l| fmt_cpu_ms(system_cpu_secs_per_order(l))),
            &each(saga, &outcomes),
            &each(baseline, &outcomes),
        ],
    )
}

/// CPU per order of each process, so a reader sees where the saga's cost goes.
fn cpu_split_table(md: &mut String, group: &ScenarioLevels<'_>) -> fmt::Result {
    let levels: Vec<&LevelResult> = group
        .pairs
        .iter()
        .flat_map(|p| [p.saga, p.baseline, p.dtm])
        .flatten()
        .collect();
    let processes = processes(levels.iter().copied());
    if processes.is_empty() {
        return Ok(());
    }

    writeln!(
        md,
        "CPU milliseconds per order by process ({}); the total leaves out the load \
         generator. \"–\": the process is not part of that system.",
        group.scenario
    )?;
    writeln!(md)?;
    let mut header = vec!["concurrency", "system"];
    header.extend(processes.iter().copied());
    header.push("total (system)");
    table_row(md, &header)?;
    table_rule(md, header.len())?;
    for level in levels {
        let mut row = vec![
            level.concurrency.to_string(),
            level.system.label().to_owned(),
        ];
        row.extend(processes.iter().map(|p| {
            level
                .cpu_secs_per_order
                .get(*p)
                .map_or_else(|| "–".to_owned(), |secs| fmt_cpu_ms(*secs))
        }));
        row.push(fmt_cpu_ms(system_cpu_secs_per_order(level)));
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        table_row(md, &cells)?;
    }
    writeln!(md)
}

/// Every process with a CPU figure in `levels`, in [`PROCESS_ORDER`].
pub(super) fn processes<'a>(levels: impl IntoIterator<Item = &'a LevelResult>) -> Vec<&'a str> {
    super::processes_in_order(&PROCESS_ORDER, levels)
}

fn chart_section(md: &mut String, groups: &[ScenarioLevels<'_>], charts: &Charts) -> fmt::Result {
    let main = groups.first().map_or("", |g| g.scenario);
    writeln!(md, "## Charts ({main})")?;
    writeln!(md)?;
    writeln!(
        md,
        "Latency distribution: x is the percentile on a \"nines\" scale (p90, p99 and \
         p99.9 equally spaced, so the tail gets room), y the latency in ms. One line per \
         system and number of clients; saga solid, baseline dashed, dtm dotted, one colour per \
         number of clients."
    )?;
    writeln!(md)?;
    writeln!(md, "![latency](latency.png)")?;
    writeln!(md)?;
    writeln!(md, "Throughput (answered orders/s) by number of clients.")?;
    writeln!(md)?;
    writeln!(md, "![throughput](throughput.png)")?;
    writeln!(md)?;
    if charts.font.is_none() {
        writeln!(
            md,
            "> Note: no font was found on this machine (looked for {}), so the charts \
             have no title, axis labels or legend. The tables above hold the same numbers.",
            super::charts::FONT_CANDIDATES.join(", ")
        )?;
        writeln!(md)?;
    }
    Ok(())
}

fn targets_section(md: &mut String, report: &Report, groups: &[ScenarioLevels<'_>]) -> fmt::Result {
    writeln!(md, "## Targets")?;
    writeln!(md)?;
    writeln!(
        md,
        "Load targets are judged on the main load ({}), recovery on the \"recovery\" \
         scenario. ✅ met, ❌ missed, ➖ not measured in this run.",
        groups.first().map_or("none in this run", |g| g.scenario)
    )?;
    writeln!(md)?;
    table_row(md, &["result", "target", "measured"])?;
    table_rule(md, 3)?;
    for target in targets::evaluate(report, groups) {
        table_row(md, &[target.verdict.mark(), &target.goal, &target.measured])?;
    }
    writeln!(md)
}

fn scenario_section(md: &mut String, scenario: &ScenarioResult) -> fmt::Result {
    writeln!(md, "## Scenario: {}", scenario.name)?;
    writeln!(md)?;
    if !scenario.description.is_empty() {
        writeln!(md, "{}", scenario.description)?;
        writeln!(md)?;
    }
    if !scenario.figures.is_empty() {
        table_row(md, &["figure", "value"])?;
        table_rule(md, 2)?;
        for (name, value) in &scenario.figures {
            table_row(md, &[name, &fmt_figure(*value)])?;
        }
        writeln!(md)?;
    }
    if !scenario.checks.is_empty() {
        writeln!(md, "Checks:")?;
        writeln!(md)?;
        for (check, held) in &scenario.checks {
            writeln!(md, "- {} {check}", if *held { "✅" } else { "❌" })?;
        }
        writeln!(md)?;
    }
    Ok(())
}

pub(super) fn table_row(md: &mut String, cells: &[&str]) -> fmt::Result {
    md.push('|');
    for cell in cells {
        // A pipe would end the cell early.
        write!(md, " {} |", cell.replace('|', "\\|"))?;
    }
    md.push('\n');
    Ok(())
}

pub(super) fn table_rule(md: &mut String, columns: usize) -> fmt::Result {
    writeln!(md, "|{}", " --- |".repeat(columns))
}

fn or_unknown(value: &str) -> &str {
    if value.trim().is_empty() {
        "unknown"
    } else {
        value
    }
}

/// "1 client", "32 clients".
pub(super) fn clients(n: usize) -> String {
    if n == 1 {
        "1 client".to_owned()
    } else {
        format!("{} clients", thousands(n as u64))
    }
}

/// Orders per second: whole numbers with thousands separators from 100 up.
pub(super) fn fmt_rate(rate: f64) -> String {
    if rate.abs() >= 100.0 {
        signed_thousands(rate.round())
    } else {
        format!("{rate:.1}")
    }
}

/// Milliseconds with about three significant digits.
pub(super) fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

pub(super) fn fmt_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| NA.to_owned(), |r| format!("{r:.2}×"))
}

pub(super) fn fmt_cpu_ms(secs: f64) -> String {
    format!("{:.3}", secs * 1_000.0)
}

/// A scenario figure: counts as whole numbers, measures to three decimals
/// (trailing zeros dropped).
pub(super) fn fmt_figure(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        signed_thousands(value)
    } else if value.is_finite() {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        value.to_string()
    }
}

fn signed_thousands(whole: f64) -> String {
    let sign = if whole < 0.0 { "-" } else { "" };
    // Whole and below 1e15 (callers check), so the cast is exact.
    format!("{sign}{}", thousands(whole.abs() as u64))
}

pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(1_234.4), "1,234");
        assert_eq!(fmt_rate(42.26), "42.3");
        assert_eq!(fmt_ms(4.567), "4.57");
        assert_eq!(fmt_ms(45.67), "45.7");
        assert_eq!(fmt_ratio(Some(0.617)), "0.62×");
        assert_eq!(fmt_ratio(None), "n/a");
        assert_eq!(fmt_figure(1_000.0), "1,000");
        assert_eq!(fmt_figure(1.8), "1.8");
        assert_eq!(fmt_figure(-2.0), "-2");
        assert_eq!(clients(1), "1 client");
    }
}
