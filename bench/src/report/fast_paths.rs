//! The Redis sections of `report.md`: the order event outbox's lag under
//! the uniform load (next to the uniform table), and each workload run with
//! a server's Redis fast path and without it.

use std::fmt::{self, Write};

use super::markdown::{NA, fmt_cpu_ms, fmt_ms, fmt_rate, table_row, table_rule, thousands};
use crate::model::{FastPathComparison, FastPathRow, OutboxLag};

/// Processes whose CPU a fast-path row shows, after the server under test.
const CPU_PROCESSES: [&str; 2] = ["mariadb", "redis"];

/// The outbox relay at each uniform level of the saga.
pub(super) fn outbox_section(md: &mut String, levels: &[OutboxLag]) -> fmt::Result {
    if levels.is_empty() {
        return Ok(());
    }
    writeln!(md, "### Order events: outbox lag (uniform, saga)")?;
    writeln!(md)?;
    writeln!(
        md,
        "After each saga level: the events the relay still had to publish when the last \
         answer came (`GetOutbox.pending`), the time from then until none was pending \
         (polled, at most 30 s), and the lag of each event the level added to the stream: \
         the stream entry id's milliseconds (Redis' clock at the XADD) minus the event's \
         `occurred_at` (the commit of the order's change)."
    )?;
    writeln!(md)?;
    table_row(
        md,
        &[
            "concurrency",
            "orders",
            "pending after load",
            "drained after s",
            "events",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
        ],
    )?;
    table_rule(md, 8)?;
    for level in levels {
        let drained = if level.drained {
            format!("{:.2}", level.drain_secs)
        } else {
            format!("not within {:.0}", level.drain_secs)
        };
        table_row(
            md,
            &[
                &level.concurrency.to_string(),
                &thousands(level.orders),
                &level.pending_after_load.to_string(),
                &drained,
                &thousands(level.events),
                &fmt_ms(level.lag_p50_ms),
                &fmt_ms(level.lag_p99_ms),
                &fmt_ms(level.lag_max_ms),
            ],
        )?;
    }
    writeln!(md)
}

/// One workload with and without Redis, row by row.
pub(super) fn comparison_section(md: &mut String, comparison: &FastPathComparison) -> fmt::Result {
    let unit = comparison.unit.as_str();
    writeln!(md, "## Redis fast path: {}", comparison.name)?;
    writeln!(md)?;
    writeln!(
        md,
        "{}. Without Redis: a second process of the same server on the same database, \
         started with `--redis-url off`. \"× without\": throughput with Redis ÷ without, \
         at the same concurrency. Statements are MariaDB's `Questions` per {unit} (all \
         databases); CPU in milliseconds per {unit}.",
        comparison.description
    )?;
    writeln!(md)?;
    let server = comparison
        .rows
        .iter()
        .flat_map(|r| r.cpu_secs_per_call.keys())
        .find(|p| !CPU_PROCESSES.contains(&p.as_str()) && p.as_str() != "generator")
        .map_or("server", String::as_str);
    let rate = format!("{unit}s/s");
    let statements = format!("statements/{unit}");
    let cpu_server = format!("CPU ms/{unit} {server}");
    let mut header = vec![
        "concurrency",
        "Redis",
        &rate,
        "× without",
        "p50 / p99 / max ms",
        "errors",
        &statements,
        &cpu_server,
    ];
    header.extend(CPU_PROCESSES);
    table_row(md, &header)?;
    table_rule(md, header.len())?;
    for row in &comparison.rows {
        let without = comparison
            .rows
            .iter()
            .find(|r| !r.redis && r.concurrency == row.concurrency);
        let ratio = match without {
            Some(without) if row.redis && without.throughput > 0.0 => {
                format!("{:.2}×", row.throughput / without.throughput)
            }
            _ => String::new(),
        };
        let cpu = |process: &str| cpu_cell(row, process);
        let mut cells = vec![
            row.concurrency.to_string(),
            if row.redis { "with" } else { "without" }.to_owned(),
            fmt_rate(row.throughput),
            ratio,
            format!(
                "{} / {} / {}",
                fmt_ms(row.latency.p50),
                fmt_ms(row.latency.p99),
                fmt_ms(row.latency.max)
            ),
            thousands(row.errors),
            row.db_per_call
                .get("Questions")
                .map_or_else(|| NA.to_owned(), |q| format!("{q:.2}")),
            cpu(server),
        ];
        cells.extend(CPU_PROCESSES.iter().map(|p| cpu(p)));
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        table_row(md, &cells)?;
    }
    writeln!(md)
}

fn cpu_cell(row: &FastPathRow, process: &str) -> String {
    row.cpu_secs_per_call
        .get(process)
        .map_or_else(|| NA.to_owned(), |s| fmt_cpu_ms(*s))
}
