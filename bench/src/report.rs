//! The report of one run, written for a reader who has not seen the code:
//! `report.json` (everything, for tools), `report.md` (tables, the verdict on
//! the targets, each scenario's findings) and two charts, `latency.png` and
//! `throughput.png`.
//!
//! The numbers are compared pair by pair: a saga level is only ever set
//! against the baseline level of the same scenario and concurrency in the
//! same run, and a missing side shows as "n/a" rather than as a guess. So
//! is a level over mutual TLS against the same level in plaintext ("What
//! TLS costs", `--transport both`).

mod charts;
mod fast_paths;
mod markdown;
mod targets;
mod transport;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::model::{LevelResult, Report, System};

/// Writes the report into `dir` (created if needed) and returns the files
/// written: `report.json`, `latency.png` and `throughput.png` (when the run
/// has load levels to chart), then `report.md`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();

    let json_path = dir.join("report.json");
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    written.push(json_path);

    let groups = group_levels(&report.levels);
    // The charts come before the Markdown, which says whether they have text.
    let charts = match groups.first() {
        Some(main) => Some(charts::write(main, dir)?),
        None => None,
    };
    if let Some(charts) = &charts {
        written.extend(charts.files.iter().cloned());
    }

    let md_path = dir.join("report.md");
    let md = markdown::render(report, &groups, charts.as_ref()).context("rendering Markdown")?;
    fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    written.push(md_path);

    Ok(written)
}

/// The load levels of one scenario, both systems side by side.
struct ScenarioLevels<'a> {
    scenario: &'a str,
    /// One per concurrency level either system ran, ascending.
    pairs: Vec<LevelPair<'a>>,
}

/// One concurrency level of one scenario: what each system measured there.
struct LevelPair<'a> {
    concurrency: usize,
    saga: Option<&'a LevelResult>,
    baseline: Option<&'a LevelResult>,
    /// The dtm peer (its own table: `crate::dtm::report`).
    dtm: Option<&'a LevelResult>,
}

impl<'a> LevelPair<'a> {
    fn side(&self, system: System) -> Option<&'a LevelResult> {
        match system {
            System::Saga => self.saga,
            System::Baseline => self.baseline,
            System::Dtm => self.dtm,
        }
    }

    /// `saga / baseline` of one measure, when both sides were measured and
    /// the baseline's figure can divide.
    fn ratio(&self, measure: impl Fn(&LevelResult) -> f64) -> Option<f64> {
        let saga = measure(self.saga?);
        let baseline = measure(self.baseline?);
        (baseline > 0.0 && saga.is_finite() && baseline.is_finite()).then(|| saga / baseline)
    }
}

/// The scenario that runs the saga on several orchestrator instances: its
/// levels differ by instances, not by system, and get a table of their own.
const INSTANCES_SCENARIO: &str = "instances";

/// Groups the levels by scenario, in the order scenarios first appear (the
/// first is the main one, charted and held to the targets). Should a system
/// appear twice at one level, its first result counts. The `instances`
/// scenario is left out (see [`INSTANCES_SCENARIO`]).
fn group_levels(levels: &[LevelResult]) -> Vec<ScenarioLevels<'_>> {
    let mut groups: Vec<ScenarioLevels<'_>> = Vec::new();
    for level in levels {
        if level.scenario == INSTANCES_SCENARIO {
            continue;
        }
        let index = match groups.iter().position(|g| g.scenario == level.scenario) {
            Some(index) => index,
            None => {
                groups.push(ScenarioLevels {
                    scenario: &level.scenario,
                    pairs: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let pairs = &mut groups[index].pairs;
        let pair = match pairs
            .iter()
            .position(|p| p.concurrency == level.concurrency)
        {
            Some(at) => &mut pairs[at],
            None => {
                pairs.push(LevelPair {
                    concurrency: level.concurrency,
                    saga: None,
                    baseline: None,
                    dtm: None,
                });
                let last = pairs.len() - 1;
                &mut pairs[last]
            }
        };
        let slot = match level.system {
            System::Saga => &mut pair.saga,
            System::Baseline => &mut pair.baseline,
            System::Dtm => &mut pair.dtm,
        };
        slot.get_or_insert(level);
    }
    for group in &mut groups {
        group.pairs.sort_by_key(|p| p.concurrency);
    }
    groups
}

/// The process that drives the load; its CPU is the harness's, not the
/// system's, so totals leave it out.
const GENERATOR_PROCESS: &str = "generator";

/// CPU seconds per order of the system under test: every process but the
/// load generator (saga: orchestrator, product, point, coupon, mariadb;
/// baseline: baseline, mariadb).
fn system_cpu_secs_per_order(level: &LevelResult) -> f64 {
    level
        .cpu_secs_per_order
        .iter()
        .filter(|(process, _)| process.as_str() != GENERATOR_PROCESS)
        .map(|(_, secs)| secs)
        .sum()
}

/// Every process with a CPU figure in `levels`: those of `order` first, in
/// that order, then the others alphabetically.
pub fn processes_in_order<'a>(
    order: &[&'static str],
    levels: impl IntoIterator<Item = &'a LevelResult>,
) -> Vec<&'a str> {
    let seen: BTreeSet<&str> = levels
        .into_iter()
        .flat_map(|l| l.cpu_secs_per_order.keys().map(String::as_str))
        .collect();
    let mut processes: Vec<&str> = order.iter().copied().filter(|p| seen.contains(p)).collect();
    processes.extend(seen.iter().filter(|p| !order.contains(p)));
    processes
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Latency, RunInfo, ScenarioResult, Transport};

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    /// A fresh directory under the system temp dir, unique to this test run.
    fn temp_dir(test: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::env::temp_dir().join(format!(
            "commerce-bench-report-{test}-{}-{nanos}",
            std::process::id()
        ))
    }

    /// A latency distribution shaped like a measured one: flat to the
    /// median, rising through the tail to the maximum.
    fn curve(latency: &Latency) -> Vec<(f64, f64)> {
        let Latency {
            p50, p95, p99, max, ..
        } = *latency;
        vec![
            (0.0, p50 * 0.5),
            (25.0, p50 * 0.8),
            (50.0, p50),
            (75.0, p50 * 1.5),
            (90.0, f64::midpoint(p50, p95)),
            (95.0, p95),
            (99.0, p99),
            (99.5, p99 * 1.2),
            (99.9, p99 * 1.6),
            (99.99, max * 0.9),
            (100.0, max),
        ]
    }

    fn level(system: System, concurrency: usize, throughput: f64, p99: f64) -> LevelResult {
        let (cpu, commits) = match system {
            System::Saga => (
                [
                    ("orchestrator", 0.000_2),
                    ("product", 0.000_1),
                    ("point", 0.000_1),
                    ("coupon", 0.000_1),
                    ("mariadb", 0.000_5),
                    ("generator", 0.000_3),
                ]
                .as_slice(),
                7.0,
            ),
            System::Baseline => (
                [
                    ("baseline", 0.000_2),
                    ("mariadb", 0.000_3),
                    ("generator", 0.000_1),
                ]
                .as_slice(),
                1.0,
            ),
            System::Dtm => (
                [
                    ("dtm", 0.000_4),
                    ("product", 0.000_1),
                    ("mariadb", 0.000_8),
                    ("generator", 0.000_4),
                ]
                .as_slice(),
                9.0,
            ),
        };
        let latency = Latency {
            p50: p99 / 4.0,
            p95: p99 * 0.75,
            p99,
            max: p99 * 2.0,
            mean: p99 / 3.0,
        };
        LevelResult {
            scenario: "uniform".into(),
            system,
            concurrency,
            orders: 10_000,
            confirmed: 9_900,
            rejected: 90,
            failed: 10,
            elapsed_secs: 10_000.0 / throughput,
            throughput,
            latency,
            latency_curve: curve(&latency),
            commits_per_order: commits,
            cpu_secs_per_order: cpu.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            db_per_order: [
                ("Questions", commits * 4.0),
                ("Com_stmt_prepare", commits),
                ("Com_commit", commits),
                ("Bytes_received", commits * 1_000.0),
                ("Bytes_sent", commits * 2_000.0),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
            instances: 1,
            transport: Transport::Tls,
        }
    }

    /// Two systems at four levels, the baseline missing at 64 clients, and a
    /// recovery scenario.
    fn sample_report() -> Report {
        let mut levels = Vec::new();
        for (concurrency, saga_tps, saga_p99, base_tps, base_p99) in [
            (1, 300.0, 5.0, 900.0, 1.5),
            (8, 900.0, 9.0, 2_500.0, 3.0),
            (32, 1_234.0, 30.0, 2_000.0, 12.0),
        ] {
            levels.push(level(System::Saga, concurrency, saga_tps, saga_p99));
            levels.push(level(System::Baseline, concurrency, base_tps, base_p99));
        }
        levels.push(level(System::Saga, 64, 1_100.0, 60.0));
        levels.push(level(System::Baseline, 128, 1_800.0, 70.0));
        for (instances, tps, p99) in [(1, 1_000.0, 40.0), (2, 1_500.0, 30.0)] {
            let mut on = level(System::Saga, 32, tps, p99);
            on.scenario = INSTANCES_SCENARIO.into();
            on.instances = instances;
            if instances == 2 {
                on.cpu_secs_per_order
                    .insert("orchestrator-2".into(), 0.000_2);
            }
            levels.push(on);
        }
        Report {
            run: RunInfo {
                command: "commerce-bench --levels 1,8,32,64 --seconds 10".into(),
                started_at: "2025-01-01T00:00:00Z".into(),
                cpus: 8,
                cpu_model: "Test CPU".into(),
                memory_gib: 15.5,
                database: "MariaDB 11.4".into(),
                profile: "release".into(),
                redis_prefix: "bench-0123456789ab".into(),
                transport: "mutual TLS".into(),
            },
            levels,
            scenarios: vec![ScenarioResult {
                name: "recovery".into(),
                description: "Kill the orchestrator with 1,000 sagas in flight.".into(),
                figures: BTreeMap::from([
                    ("in_flight".to_owned(), 1_000.0),
                    ("recovery_secs".to_owned(), 3.25),
                ]),
                checks: vec![
                    ("every saga finished".into(), true),
                    ("no stock leaked".into(), false),
                ],
            }],
            ..Report::default()
        }
    }

    /// JSON values equal but for the last bits of floats, which `serde_json`'s
    /// default number parser may round differently.
    fn assert_same(read: &serde_json::Value, written: &serde_json::Value) {
        use serde_json::Value;
        match (read, written) {
            (Value::Number(a), Value::Number(b)) => {
                let (a, b) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} != {b}");
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len());
                a.iter().zip(b).for_each(|(a, b)| assert_same(a, b));
            }
            (Value::Object(a), Value::Object(b)) => {
                assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
                a.values()
                    .zip(b.values())
                    .for_each(|(a, b)| assert_same(a, b));
            }
            (a, b) => assert_eq!(a, b),
        }
    }

    #[test]
    fn report_writes_every_file() -> anyhow::Result<()> {
        let dir = temp_dir("files");
        let report = sample_report();
        let written = write(&report, &dir)?;

        let names: Vec<_> = written
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(
            names,
            ["report.json", "latency.png", "throughput.png", "report.md"]
        );
        for path in &written {
            assert!(path.is_file(), "{} missing", path.display());
        }
        for chart in ["latency.png", "throughput.png"] {
            let bytes = fs::read(dir.join(chart))?;
            assert!(bytes.starts_with(PNG_SIGNATURE), "{chart} is not a PNG");
        }

        let json = fs::read_to_string(dir.join("report.json"))?;
        let parsed: Report = serde_json::from_str(&json)?;
        assert_same(
            &serde_json::to_value(&parsed)?,
            &serde_json::to_value(&report)?,
        );

        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_markdown_compares_pairs_and_judges_targets() -> anyhow::Result<()> {
        let dir = temp_dir("markdown");
        write(&sample_report(), &dir)?;
        let md = fs::read_to_string(dir.join("report.md"))?;

        // 32 clients: 1,234 / 2,000 orders/s = 0.62x; p99 30 / 12 ms = 2.50x.
        let row = md
            .lines()
            .find(|l| l.starts_with("| 32 |"))
            .expect("a row for 32 clients");
        assert!(row.contains("| 0.62× |"), "{row}");
        assert!(row.contains("| 2.50× |"), "{row}");
        // 64 clients: the baseline did not run, so nothing to compare.
        let row = md
            .lines()
            .find(|l| l.starts_with("| 64 |"))
            .expect("a row for 64 clients");
        assert!(row.contains("| n/a |"), "{row}");

        let targets = md.split("## Targets").nth(1).expect("a Targets section");
        let line = |needle: &str| {
            targets
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no target line for {needle}"))
                .to_owned()
        };
        assert!(line("0.5 × baseline").contains("✅"));
        assert!(line("0.5 × baseline").contains("0.62×"));
        assert!(line("1,000 sagas/s").contains("✅"));
        assert!(line("1,000 sagas/s").contains("1,234"));
        assert!(line("25 ms").contains("❌"));
        assert!(line("8 commits").contains("✅"));
        assert!(line("10 s").contains("✅"));
        assert!(line("10 s").contains("3.25 s"));

        // Statements per order, by kind, next to the CPU split.
        let statements = md
            .lines()
            .find(|l| l.starts_with("| 32 | saga |") && l.contains("| 28.00 |"))
            .expect("a statements row for the saga at 32 clients");
        assert!(statements.contains("| 6.84 | 13.67 |"), "{statements}");
        // Two orchestrator instances against one: 1.50x the throughput.
        let instances = md
            .split("## Load: instances")
            .nth(1)
            .expect("an instances section");
        let row = instances
            .lines()
            .find(|l| l.starts_with("| 2 | 32 |"))
            .expect("a row for two instances");
        assert!(row.contains("| 1.50× |"), "{row}");
        assert!(row.contains("| 0.75× |"), "{row}");
        assert!(instances.contains("| saga ×2 |"));

        assert!(md.contains("## Scenario: recovery"));
        assert!(md.contains("✅ every saga finished"));
        assert!(md.contains("❌ no stock leaked"));
        assert!(md.contains("![latency](latency.png)"));
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_sets_tls_against_plaintext_level_by_level() -> anyhow::Result<()> {
        let mut report = sample_report();
        let mut plaintext = level(System::Saga, 32, 1_500.0, 24.0);
        plaintext.transport = Transport::Plaintext;
        plaintext
            .cpu_secs_per_order
            .insert("product".into(), 0.000_05);
        report.plaintext_levels = vec![plaintext, {
            // No TLS twin: left out.
            let mut alone = level(System::Baseline, 2, 100.0, 1.0);
            alone.transport = Transport::Plaintext;
            alone
        }];
        let dir = temp_dir("transport");
        write(&report, &dir)?;
        let md = fs::read_to_string(dir.join("report.md"))?;
        assert!(md.contains("- Transport: mutual TLS"), "{md}");
        let section = md
            .split("## What TLS costs (uniform)")
            .nth(1)
            .expect("a What TLS costs section");
        let rows: Vec<&str> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| l.starts_with("| 32 |") || l.starts_with("| 2 |"))
            .collect();
        // 1,234 / 1,500 orders/s = 0.82x; p99 30 / 24 ms = 1.25x; the
        // product's 0.05 ms more CPU per order over TLS.
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].contains("| 1,234 | 1,500 | 0.82× |"), "{}", rows[0]);
        assert!(rows[0].contains("| 30.0 / 24.0 | 1.25× |"), "{}", rows[0]);
        assert!(rows[0].ends_with("| +0.050 |"), "{}", rows[0]);
        assert!(rows[1].contains("| 0.100 / 0.050 |"), "{}", rows[1]);
        // Without a plaintext pass, no section.
        write(&sample_report(), &dir)?;
        let md = fs::read_to_string(dir.join("report.md"))?;
        assert!(!md.contains("What TLS costs"));
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_without_levels_or_recovery_says_not_measured() -> anyhow::Result<()> {
        let dir = temp_dir("empty");
        let written = write(&Report::default(), &dir)?;
        assert_eq!(written.len(), 2, "no charts without levels: {written:?}");
        let md = fs::read_to_string(dir.join("report.md"))?;
        let targets = md.split("## Targets").nth(1).expect("a Targets section");
        let verdicts: Vec<_> = targets
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(2) // header and rule
            .collect();
        assert_eq!(verdicts.len(), 5, "{targets}");
        for line in verdicts {
            assert!(
                line.starts_with("| ➖ |") && line.contains("not measured"),
                "{line}"
            );
        }
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_chart_without_font_still_draws() -> anyhow::Result<()> {
        let dir = temp_dir("nofont");
        fs::create_dir_all(&dir)?;
        let report = sample_report();
        let groups = group_levels(&report.levels);
        let files = charts::write_with(&groups[0], &dir, false)?;
        for path in &files {
            assert!(fs::read(path)?.starts_with(PNG_SIGNATURE));
        }
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_charts_one_system_at_one_level() -> anyhow::Result<()> {
        // A narrow latency range (linear axis) and no baseline to pair with.
        let dir = temp_dir("single");
        let mut only = level(System::Saga, 16, 800.0, 4.0);
        only.scenario = "hot_product".into();
        only.latency_curve = vec![(0.0, 2.0), (50.0, 2.5), (99.0, 4.0), (100.0, 9.0)];
        let report = Report {
            levels: vec![only],
            ..Report::default()
        };
        write(&report, &dir)?;
        for chart in ["latency.png", "throughput.png"] {
            assert!(fs::read(dir.join(chart))?.starts_with(PNG_SIGNATURE));
        }
        let md = fs::read_to_string(dir.join("report.md"))?;
        assert!(md.contains("## Load: hot_product"));
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn report_says_when_charts_have_no_text() -> anyhow::Result<()> {
        let report = sample_report();
        let groups = group_levels(&report.levels);
        let charts = charts::Charts {
            files: Vec::new(),
            font: None,
        };
        let md = markdown::render(&report, &groups, Some(&charts))?;
        assert!(md.contains("no font was found"), "{md}");
        Ok(())
    }

    #[test]
    fn report_groups_levels_by_scenario_and_concurrency() {
        let report = sample_report();
        let groups = group_levels(&report.levels);
        assert_eq!(groups.len(), 1);
        let levels: Vec<_> = groups[0]
            .pairs
            .iter()
            .map(|p| (p.concurrency, p.saga.is_some(), p.baseline.is_some()))
            .collect();
        assert_eq!(
            levels,
            [
                (1, true, true),
                (8, true, true),
                (32, true, true),
                (64, true, false),
                (128, false, true)
            ]
        );
        // The generator's CPU is the harness's, not the system's.
        let saga = groups[0].pairs[0].saga.expect("saga at 1 client");
        assert!((system_cpu_secs_per_order(saga) - 0.001).abs() < 1e-12);
    }
}
