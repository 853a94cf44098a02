//! Metrics end to end: every server of a test mesh serves `/metrics`, and a
//! real Prometheus (Debian's `prometheus`, installed by `deploy/setup.sh`;
//! `PROMETHEUS` names another binary) scrapes them every second with the
//! alert rules of `deploy/prometheus/alerts.yml` loaded. An order placed
//! through the orchestrator shows in what Prometheus answers: the saga
//! counter, the gRPC requests by method and code, the steps, the outbox, the
//! participants' barrier rows and the BFF's HTTP requests. Every expression
//! of the alert rules and of the Grafana dashboard
//! (`deploy/grafana/saga-dashboard.json`) is one Prometheus accepts, over
//! metric names the servers really export, and so is every one of the saga
//! console (`deploy/prometheus/consoles/saga.html`), which shows the
//! order's numbers and draws its graphs in headless Chromium. The scrape
//! config and the rules pass `promtool check`, and the rules their unit
//! tests (`promtool test rules`). Every wait is a bounded poll, never a
//! sleep.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use commerce_e2e::node::free_port;
use commerce_proto::order::v1::OrderState;
use commerce_testkit::metrics::scrape;
use serde_json::Value;

use crate::bff::{Bff, http};
use crate::bff_console::{ChromeDriver, screenshot, wait_for};
use crate::harness::Mesh;
use crate::shop;

/// The longest Prometheus may take to show what happened.
const PATIENCE: Duration = Duration::from_secs(60);

/// The repository's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `$PROMETHEUS` when it names a file, else `prometheus` on the PATH; fails
/// naming the setup script that installs it.
fn prometheus_binary() -> PathBuf {
    let named = std::env::var_os("PROMETHEUS")
        .map(PathBuf::from)
        .filter(|path| path.is_file());
    named.or_else(|| on_path("prometheus")).unwrap_or_else(|| {
        panic!(
            "prometheus not found: run `bash deploy/setup.sh` (it installs Debian's \
                 prometheus package), or set PROMETHEUS to its binary"
        )
    })
}

/// promtool, from the same package: beside prometheus, else on the PATH.
fn promtool_binary() -> PathBuf {
    prometheus_binary()
        .parent()
        .map(|dir| dir.join("promtool"))
        .filter(|path| path.is_file())
        .or_else(|| on_path("promtool"))
        .unwrap_or_else(|| {
            panic!("promtool not found: run `bash deploy/setup.sh` (Debian's prometheus package)")
        })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A Prometheus server on a free loopback port with a storage directory of
/// its own, scraping `targets` (job name, metrics address) every second;
/// killed and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    async fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let program = prometheus_binary();
        let dir = std::env::temp_dir().join(format!(
            "commerce-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            repo().join("deploy/prometheus/alerts.yml").display()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&program)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--web.console.templates={}",
                repo().join("deploy/prometheus/consoles").display()
            ))
            .arg(format!(
                "--web.console.libraries={}",
                repo().join("deploy/prometheus/console_libraries").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let prometheus = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        prometheus
            .poll("ready", || async {
                let answer = http().get(&ready).send().await.ok()?;
                answer.status().is_success().then_some(())
            })
            .await;
        prometheus
    }

    /// Polls `probe` until it gives a value (bounded by [`PATIENCE`]);
    /// panics naming `what` and Prometheus' log otherwise.
    async fn poll<T, F, Fut>(&self, what: &str, probe: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(50);
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus: no {what} within {PATIENCE:?}; log: {}",
                self.dir.join("prometheus.log").display()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `/api/v1/query` of `expr`: its result vector (an error answer, or
    /// an expression Prometheus refuses, panics).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let answer: Value = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The console page `name` as Prometheus renders it (a query the page
    /// makes that Prometheus refuses fails the page, and so this).
    async fn console(&self, name: &str) -> String {
        let answer = http()
            .get(format!("{}/consoles/{name}", self.url))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let page = answer.text().await.unwrap();
        assert!(status.is_success(), "/consoles/{name}: {status}\n{page}");
        page
    }

    /// The first sample's value of `expr`, if the result has one.
    async fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `expr` has a value of at least `floor`; returns it.
    async fn at_least(&self, expr: &str, floor: f64) -> f64 {
        self.poll(expr, || async {
            self.value(expr).await.filter(|v| *v >= floor)
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every expression of the dashboard's panels, with Grafana's variables
/// replaced by what Prometheus understands.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/saga-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            target["expr"]
                .as_str()
                .expect("every target has an expr")
                .replace("$__rate_interval", "1m")
        })
        .collect();
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    exprs
}

/// Every expression the saga console's graphs ask Prometheus for (its
/// tables' are checked as the page renders): the `expr: [...]` of each
/// `PromConsole.Graph`, a JSON array of strings.
fn console_graph_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/consoles/saga.html")).unwrap();
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: "))
        .flat_map(|array| {
            let array = array.trim_end_matches(',');
            serde_json::from_str::<Vec<String>>(array)
                .unwrap_or_else(|e| panic!("a graph's expr is not a JSON array ({e}): {array}"))
        })
        .collect();
    assert!(exprs.len() >= 6, "{exprs:?}");
    exprs
}

/// The first number shown after `marker` in a rendered page: the text of
/// the first element after it that is a number (a table row's first
/// numeric cell, a stat's value).
fn number_after(page: &str, marker: &str) -> f64 {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` is not in the page:\n{page}"));
    page[at..]
        .split('>')
        .skip(1)
        .filter_map(|text| text.split('<').next()?.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("no number after `{marker}`"))
}

/// Every `expr` of the alert rules (read line by line: `expr: ...` on one
/// line, or `expr: |` with the lines indented below it).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let expr = expr.trim();
        if expr != "|" {
            exprs.push(expr.to_owned());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
            block.push_str(next.trim());
            block.push(' ');
        }
        exprs.push(block.trim().to_owned());
    }
    assert!(exprs.len() >= 5, "{exprs:?}");
    exprs
}

/// The metric names an expression reads: identifiers outside quotes that
/// name the mesh's metrics (`commerce_...`) or the process's (`process_...`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("commerce_") || word.starts_with("process_") {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

#[tokio::test]
async fn prometheus_scrapes_an_order_s_saga_from_every_server() {
    let mesh = Mesh::start(1).await;
    // The BFF runs in this process: its metrics are this process's.
    let bff = Bff::start(&mesh).await;
    let endpoint =
        commerce_platform::metrics::MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    commerce_bff::metrics::describe();
    let bff_metrics = endpoint.local_addr().unwrap();
    let bff_endpoint = endpoint.spawn(|| {});
    let metrics_addr = |node: &crate::harness::Node| node.metrics_addr().expect("metrics served");
    let targets = [
        ("orchestrator", metrics_addr(mesh.orchestrator())),
        ("product", metrics_addr(&mesh.product)),
        ("point", metrics_addr(&mesh.point)),
        ("coupon", metrics_addr(&mesh.coupon)),
        ("bff", bff_metrics),
    ];
    let prometheus = Prometheus::start(&targets).await;

    let brand = shop::brand(&mesh, "Acme").await;
    let shoe = shop::product(&mesh, brand, "Shoe", 12_000, 10).await;
    shop::charge(&mesh, "alice", 100_000).await;
    let order = shop::place(&mesh, "alice", &[(shoe, 2)], None).await;
    assert_eq!(shop::state(&order), OrderState::Confirmed, "{order:?}");
    let catalogue = http().get(bff.at("/api/v1/products")).send().await.unwrap();
    assert!(catalogue.status().is_success(), "{}", catalogue.status());

    // The saga, as Prometheus saw it.
    prometheus
        .at_least(
            r#"sum(commerce_saga_finished_total{job="orchestrator",kind="place_order",outcome="completed"})"#,
            1.0,
        )
        .await;
    prometheus
        .at_least(
            r#"sum(commerce_saga_started_total{kind="place_order"})"#,
            1.0,
        )
        .await;
    for step in ["reserve_stock", "deduct_points", "confirm_order"] {
        prometheus
            .at_least(
                &format!(
                    r#"sum(commerce_saga_step_duration_seconds_count{{step="{step}",direction="forward",outcome="succeeded"}})"#
                ),
                1.0,
            )
            .await;
    }
    // Requests by method and code: the orchestrator's PlaceOrder, and the
    // saga's calls as each participant answered them.
    prometheus
        .at_least(
            r#"sum(commerce_grpc_server_requests_total{job="orchestrator",service="commerce.order.v1.OrderService",method="PlaceOrder",code="OK"})"#,
            1.0,
        )
        .await;
    for (job, method) in [("product", "ReserveStock"), ("point", "DeductPoints")] {
        prometheus
            .at_least(
                &format!(
                    r#"sum(commerce_grpc_server_requests_total{{job="{job}",method="{method}",code="OK"}})"#
                ),
                1.0,
            )
            .await;
    }
    // The order's CONFIRMED event left the outbox.
    prometheus
        .at_least(r#"sum(commerce_outbox_published_total)"#, 1.0)
        .await;
    prometheus
        .poll("outbox drained", || async {
            prometheus
                .value("max(commerce_outbox_pending)")
                .await
                .filter(|pending| *pending == 0.0)
        })
        .await;
    // Participants' barrier rows, the BFF's requests, every server up.
    for job in ["product", "point"] {
        prometheus
            .at_least(
                &format!(
                    r#"sum(commerce_barrier_rows_inserted_total{{job="{job}",state="applied"}})"#
                ),
                1.0,
            )
            .await;
    }
    prometheus
        .at_least(
            r#"sum(commerce_http_server_requests_total{job="bff",route="/api/v1/products",method="GET",status="200"})"#,
            1.0,
        )
        .await;
    prometheus
        .at_least(r#"count(up == 1)"#, targets.len() as f64)
        .await;
    // The alert rules are loaded, evaluate, and none fires.
    let rules: Value = http()
        .get(format!("{}/api/v1/rules", prometheus.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.iter().any(|r| r["name"] == "SagasStuck"), "{rules}");
    for rule in &loaded {
        assert_ne!(rule["health"], "err", "{rule}");
        assert_eq!(rule["state"], "inactive", "{rule}");
    }

    // Every expression of the dashboard and the alerts is valid PromQL over
    // names the servers export.
    let mut exported = BTreeSet::new();
    for (_, addr) in &targets {
        let metrics = scrape(*addr).await.unwrap();
        exported.extend(metrics.names().into_iter().map(str::to_owned));
    }
    let exprs = [dashboard_exprs(), alert_exprs(), console_graph_exprs()];
    for expr in exprs.iter().flatten() {
        prometheus.query(expr).await;
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "`{name}` (in `{expr}`) is not exported by the mesh"
            );
        }
    }
    // And the dashboard has a line to draw for each step's latency (a rate
    // needs two scrapes of a series).
    let p99 = r#"histogram_quantile(0.99, sum by (le, step) (rate(commerce_saga_step_duration_seconds_bucket[1m])))"#;
    prometheus
        .poll("step latency", || async {
            let lines = prometheus.query(p99).await;
            (lines.len() >= 3).then_some(())
        })
        .await;

    // The saga console (deploy/prometheus/consoles) shows the order: its
    // numbers in the page Prometheus renders, its graphs drawn by a real
    // browser from Prometheus' answers.
    let page = prometheus.console("saga.html").await;
    let completed = number_after(&page, r#"id="finished-place_order-completed""#);
    assert!(completed >= 1.0, "completed sagas {completed} in:\n{page}");
    let reserved = number_after(&page, r#"id="step-reserve_stock-forward""#);
    assert!(
        reserved >= 1.0,
        "reserve_stock calls {reserved} in:\n{page}"
    );
    assert_eq!(number_after(&page, r#"id="stuck""#), 0.0, "{page}");
    assert_eq!(number_after(&page, r#"id="alerts-firing""#), 0.0, "{page}");
    assert_eq!(
        number_after(&page, r#"id="servers-up""#),
        targets.len() as f64,
        "{page}"
    );
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/consoles/saga.html", prometheus.url))
        .await
        .unwrap();
    for graph in ["throughput-graph", "step-latency-graph", "grpc-graph"] {
        wait_for(&browser, graph, &format!("#{graph} svg path")).await;
    }
    screenshot(&browser, "prometheus-saga-console.png").await;
    browser.close().await.unwrap();
    drop(driver);

    bff_endpoint.abort();
    bff.stop().await;
    drop(prometheus);
    mesh.shutdown().await;
}

/// promtool passes the scrape configs (up.sh's and compose's),
/// the alert rules and the rules' unit tests of `deploy/prometheus`.
#[test]
fn promtool_passes_the_scrape_config_and_the_alert_rules() {
    let promtool = promtool_binary();
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "config", "compose.yml"],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn metric_names_are_read_outside_quotes() {
    let names = metric_names(
        r#"sum by (le) (rate(commerce_x_seconds_bucket{service="commerce_not_a_name"}[1m])) / process_y"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["commerce_x_seconds_bucket", "process_y"]
    );
}
