//! A tiny run of every benchmark scenario, so the harness cannot rot: the
//! systems start as processes, every scenario runs over mutual TLS and the
//! uniform one again in plaintext (`--transport both`), the report is
//! written and every scenario's invariant checks hold. No figure is
//! asserted.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::process::Command;

#[test]
fn smoke_run_writes_a_report_whose_checks_hold() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let out = std::env::temp_dir().join(format!("commerce-bench-smoke-{id}"));
    // A `commerce_t` prefix: deploy/test.sh drops leftovers of failed runs.
    let prefix = format!("commerce_t{}_bench", &id[..12]);
    let redis_url = std::env::var("COMMERCE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let status = Command::new(env!("CARGO_BIN_EXE_commerce-bench"))
        .args(["run", "--smoke", "--transport", "both"])
        .args(["--db-prefix", &prefix, "--out"])
        .arg(&out)
        .env("BENCH_MYSQL_URL", commerce_testkit::mysql_admin_url())
        .env("BENCH_REDIS_URL", &redis_url)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "benchmark failed; logs in {}",
        out.join("logs").display()
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let levels = report["levels"].as_array().unwrap();
    for system in ["saga", "baseline"] {
        assert!(
            levels
                .iter()
                .any(|l| l["system"] == system && l["scenario"] == "uniform"),
            "no uniform level of {system}"
        );
    }
    // Every scenario over TLS; the uniform one again in plaintext, its
    // checks among the scenarios' (checked below).
    assert!(
        report["run"]["transport"]
            .as_str()
            .unwrap()
            .starts_with("mutual TLS"),
        "{}",
        report["run"]
    );
    for level in levels {
        assert_eq!(level["transport"], "tls", "{level}");
    }
    let plaintext = report["plaintext_levels"].as_array().unwrap();
    for system in ["saga", "baseline", "dtm"] {
        assert!(
            plaintext
                .iter()
                .any(|l| l["system"] == system && l["transport"] == "plaintext"),
            "no plaintext level of {system}"
        );
    }
    for level in levels.iter().chain(plaintext) {
        assert_eq!(level["failed"], 0, "failed orders in {level}");
    }
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in [
        "latency_breakdown",
        "reconcile_uniform",
        "reconcile_uniform (plaintext)",
        "reconcile_instances",
        "hot_product",
        "flash_coupon",
        "catalogue",
        "recovery",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    // The statements per order, by kind, of every level.
    for level in levels {
        for counter in ["Questions", "Com_stmt_execute", "Com_commit", "Bytes_sent"] {
            assert!(
                level["db_per_order"][counter].is_number(),
                "no {counter} in {level}"
            );
        }
    }
    // One, then two orchestrator instances.
    let instances: Vec<u64> = levels
        .iter()
        .filter(|l| l["scenario"] == "instances")
        .map(|l| l["instances"].as_u64().unwrap())
        .collect();
    assert_eq!(instances, [1, 2]);
    for scenario in scenarios {
        for check in scenario["checks"].as_array().unwrap() {
            assert_eq!(check[1], true, "{} failed: {}", scenario["name"], check[0]);
        }
    }
    // The outbox's lag at each uniform saga level.
    let lags = report["outbox_lag"].as_array().unwrap();
    assert_eq!(lags.len(), 2, "{lags:?}");
    for lag in lags {
        assert!(lag["events"].as_u64().unwrap() > 0, "no events in {lag}");
    }
    // Flash coupon and catalogue, each with and without Redis.
    let fast_paths: Vec<&str> = report["fast_paths"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| {
            let sides: Vec<bool> = c["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["redis"].as_bool().unwrap())
                .collect();
            assert!(sides.contains(&true) && sides.contains(&false), "{c}");
        })
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(fast_paths, ["flash_coupon", "catalogue"]);
    // The run's Redis keys are gone.
    let prefix = report["run"]["redis_prefix"].as_str().unwrap();
    assert!(prefix.starts_with("bench-"), "{prefix}");
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut cursor = 0u64;
    loop {
        let (next, left): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query(&mut redis)
            .unwrap();
        assert!(left.is_empty(), "keys of the run left: {left:?}");
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for file in ["report.md", "latency.png", "throughput.png"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## What TLS costs (uniform)"), "{md}");
    std::fs::remove_dir_all(&out).unwrap();
}
