//! Counters read around each measured run: MariaDB's global status counters
//! (statements by kind, commits, bytes; all databases), the CPU time of
//! every process under test, from `/proc`, and the orchestrator's step
//! timings, from its Prometheus metrics.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use commerce_testkit::metrics::Exposition;
use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};

use crate::model::RunInfo;

#[derive(QueryableByName)]
struct Status {
    #[diesel(sql_type = Text, column_name = "Variable_name")]
    name: String,
    #[diesel(sql_type = Text, column_name = "Value")]
    value: String,
}

/// The global status counters the report gives per order, as MariaDB names
/// them (see docs/benchmarks.md for what each counts). A statement executed
/// as a prepared statement counts in `Com_stmt_execute` and in the
/// `Com_<kind>` of its kind; `Questions` counts every statement a client
/// sent, but not the prepares and closes of prepared statements.
pub const DB_COUNTERS: [&str; 14] = [
    "Questions",
    "Com_stmt_prepare",
    "Com_stmt_close",
    "Com_stmt_execute",
    "Com_select",
    "Com_insert",
    "Com_update",
    "Com_delete",
    "Com_replace",
    "Com_begin",
    "Com_commit",
    "Com_rollback",
    "Bytes_received",
    "Bytes_sent",
];

/// One reading of [`DB_COUNTERS`].
#[derive(Debug, Clone, Default)]
pub struct DbCounters(BTreeMap<String, u64>);

impl DbCounters {
    /// `later - self` for every counter (a counter that went back, as after
    /// a server restart, gives 0).
    fn delta(&self, later: &DbCounters) -> BTreeMap<String, u64> {
        later
            .0
            .iter()
            .map(|(name, after)| {
                let before = self.0.get(name).copied().unwrap_or(0);
                (name.clone(), after.saturating_sub(before))
            })
            .collect()
    }
}

/// Reads the database server's global counters on one connection of its
/// own, and knows what one reading adds to them (the `SHOW GLOBAL STATUS`
/// statement itself and its bytes), so that a before/after pair can leave
/// the harness's own reading out.
pub struct DbCounterReader {
    conn: AsyncMysqlConnection,
    /// What one reading adds to each counter (measured as the difference of
    /// two readings in a row).
    own: BTreeMap<String, u64>,
}

impl DbCounterReader {
    pub async fn connect(server_url: &str) -> anyhow::Result<Self> {
        let conn = AsyncMysqlConnection::establish(server_url).await?;
        let mut reader = Self {
            conn,
            own: BTreeMap::new(),
        };
        // The smallest of a few back-to-back differences: background work
        // of the servers (a recovery poll) can only add to a difference.
        let mut own: Option<BTreeMap<String, u64>> = None;
        let mut last = reader.read().await?;
        for _ in 0..3 {
            let next = reader.read().await?;
            let delta = last.delta(&next);
            own = Some(match own {
                None => delta,
                Some(min) => min
                    .into_iter()
                    .map(|(k, v)| {
                        let d = delta.get(&k).copied().unwrap_or(0);
                        (k, v.min(d))
                    })
                    .collect(),
            });
            last = next;
        }
        reader.own = own.unwrap_or_default();
        Ok(reader)
    }

    pub async fn read(&mut self) -> anyhow::Result<DbCounters> {
        let names = DB_COUNTERS
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(",");
        let rows: Vec<Status> = diesel::sql_query(format!(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"
        ))
        .load(&mut self.conn)
        .await?;
        let mut counters = BTreeMap::new();
        for row in rows {
            counters.insert(row.name, row.value.parse()?);
        }
        Ok(DbCounters(counters))
    }

    /// Each counter's growth from `before` to `after` per order, less what
    /// the reading of `after` added.
    pub fn per_order(
        &self,
        before: &DbCounters,
        after: &DbCounters,
        orders: u64,
    ) -> BTreeMap<String, f64> {
        before
            .delta(after)
            .into_iter()
            .map(|(name, delta)| {
                let own = self.own.get(&name).copied().unwrap_or(0);
                let value = delta.saturating_sub(own) as f64 / orders.max(1) as f64;
                (name, value)
            })
            .collect()
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// The database server's process, when it runs on this machine.
pub fn database_pid() -> Option<u32> {
    process_pid(&["mariadbd", "mysqld"])
}

/// The Redis server's process, when it runs on this machine.
pub fn redis_pid() -> Option<u32> {
    process_pid(&["redis-server"])
}

/// The first process whose command name is one of `names`.
fn process_pid(names: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            names.contains(&comm.trim()).then_some(pid)
        })
}

/// CPU seconds of named processes, taken before and after a run.
pub struct CpuSample(BTreeMap<String, f64>);

impl CpuSample {
    pub fn take(processes: &[(&str, u32)]) -> Self {
        let mut seconds = BTreeMap::new();
        for (name, pid) in processes {
            if let Some(s) = cpu_seconds(*pid) {
                seconds.insert((*name).to_owned(), s);
            }
        }
        if let Some(s) = cpu_seconds(std::process::id()) {
            seconds.insert("generator".to_owned(), s);
        }
        Self(seconds)
    }

    /// CPU seconds per order of each process between `self` and `later`.
    pub fn per_order(&self, later: &CpuSample, orders: u64) -> BTreeMap<String, f64> {
        later
            .0
            .iter()
            .filter_map(|(name, after)| {
                let before = self.0.get(name)?;
                Some((name.clone(), (after - before) / orders.max(1) as f64))
            })
            .collect()
    }
}

/// The machine and database the run is on.
pub async fn run_info(server_url: &str, command: String) -> RunInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let database = database_version(server_url)
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    RunInfo {
        command,
        started_at: chrono::Utc::now().to_rfc3339(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        memory_gib,
        database,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
        redis_prefix: String::new(),
        transport: String::new(),
    }
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

async fn database_version(server_url: &str) -> anyhow::Result<String> {
    let mut conn = AsyncMysqlConnection::establish(server_url).await?;
    let v: Version = diesel::sql_query("SELECT VERSION() AS version")
        .get_result(&mut conn)
        .await?;
    Ok(v.version)
}

/// The orchestrator's metrics now, to difference a run's step timings
/// against ([`step_timings`]); None when it serves none (`BENCH_METRICS=off`).
pub async fn orchestrator_metrics(
    systems: &crate::mesh::Systems,
) -> anyhow::Result<Option<Exposition>> {
    let Some(addr) = systems.orchestrator.metrics_addr() else {
        return Ok(None);
    };
    let metrics = commerce_testkit::metrics::scrape(addr)
        .await
        .context("scraping the orchestrator's metrics")?;
    Ok(Some(metrics))
}

/// Participant-call and step-log-write time of each saga step between two
/// scrapes of the orchestrator's metrics: step -> (steps, total call ms,
/// total write ms). A step counts once it proceeded (succeeded or was
/// refused); `place_order` is the write that records an order with its
/// saga, one per saga.
pub fn step_timings(before: &Exposition, after: &Exposition) -> BTreeMap<String, (u64, f64, f64)> {
    use order_orchestrator::metrics::{LOG_WRITE_DURATION, STEP_DURATION};
    let delta = |name: &str, labels: &[(&str, &str)]| {
        (after.sum(name, labels) - before.sum(name, labels)).max(0.0)
    };
    let steps: BTreeSet<&str> = after
        .samples
        .iter()
        .filter(|s| s.name.starts_with(STEP_DURATION) || s.name.starts_with(LOG_WRITE_DURATION))
        .filter_map(|s| s.labels.get("step").map(String::as_str))
        .collect();
    let mut timings = BTreeMap::new();
    for step in steps {
        let (mut calls, mut call_seconds) = (0.0, 0.0);
        for outcome in ["succeeded", "rejected"] {
            let labels = [("step", step), ("outcome", outcome)];
            calls += delta(&format!("{STEP_DURATION}_count"), &labels);
            call_seconds += delta(&format!("{STEP_DURATION}_sum"), &labels);
        }
        let labels = [("step", step)];
        let writes = delta(&format!("{LOG_WRITE_DURATION}_count"), &labels);
        let write_seconds = delta(&format!("{LOG_WRITE_DURATION}_sum"), &labels);
        // `place_order` makes no call: its writes are its count.
        let count = if calls > 0.0 { calls } else { writes };
        if count > 0.0 {
            timings.insert(
                step.to_owned(),
                (count as u64, call_seconds * 1000.0, write_seconds * 1000.0),
            );
        }
    }
    timings
}
