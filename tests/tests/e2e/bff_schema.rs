//! Schemathesis (from PyPI, installed by deploy/setup.sh) against the BFF's
//! `/openapi.json` in front of a real mesh: generated valid and invalid
//! requests for every operation, bounded in examples and time; no answer
//! may be a 5xx, and every answer must match the document (status, content
//! type, headers, schema).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::bff::{Bff, http};
use crate::harness::Mesh;

/// Schemathesis: `$SCHEMATHESIS`, else `.tools/bin/schemathesis`, else PATH.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/schemathesis");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("schemathesis")
}

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

#[tokio::test]
async fn schemathesis_finds_no_5xx_and_no_answer_off_the_document() {
    let mesh = Mesh::start(1).await;
    let bff = Bff::start(&mesh).await;
    // Operators are users too: one token reaches every operation.
    let ops = bff.operator_token();
    // A little shop, so generated ids sometimes hit real rows.
    let client = http();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(bff.at(path))
            .bearer_auth(&ops)
            .header("Idempotency-Key", "seed")
            .json(&body)
            .send()
    };
    let brand = post("/api/v1/admin/brands", json!({"name": "Seed"}))
        .await
        .unwrap();
    assert_eq!(brand.status(), 201);
    for id in 1..=3 {
        let created = post(
            "/api/v1/admin/products",
            json!({"brandId": 1, "name": format!("Seed {id}"), "price": 1000 * id, "status": "on_sale", "stock": 100}),
        )
        .await
        .unwrap();
        assert_eq!(created.status(), 201);
    }
    post("/api/v1/me/points/charges", json!({"amount": 1_000_000}))
        .await
        .unwrap();

    let program = schemathesis();
    let report = mesh.log_dir.join("schemathesis");
    // Its working files (.schemathesis/) go there too, not into the tree.
    std::fs::create_dir_all(&report).unwrap();
    let run = tokio::process::Command::new(&program)
        .arg("run")
        .arg(bff.at("/openapi.json"))
        .args(["--checks", CHECKS])
        // Bounded by examples (a time budget would make the fuzzing phase
        // repeat until it is spent) and by the timeout below.
        .args(["--max-examples", "25"])
        .args(["--seed", "20261202"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .args(["--header", &format!("Authorization: Bearer {ops}")])
        .arg("--report-dir")
        .arg(&report)
        .args(["--report", "junit"])
        .current_dir(&report)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .expect("schemathesis finishes within its time budget")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); deploy/setup.sh installs it",
                program.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems (report in {}):\n{stdout}\n{stderr}",
        report.display()
    );
    // It really tested: every operation of the document was exercised.
    let operations = http()
        .get(bff.at("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum::<usize>();
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{stdout}"
    );

    // The summary, for whoever runs this with --nocapture.
    let summary = stdout.lines().rev().take(24).collect::<Vec<_>>();
    println!(
        "{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );

    bff.stop().await;
    mesh.shutdown().await;
}
