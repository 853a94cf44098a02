//! The operator console in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), against a BFF in front of a test mesh. A saga
//! made STUCK as in `failures.rs` shows in the counts, is found through the
//! state filter, opened with its timeline, retried through the console's
//! confirmation dialog and followed until it is compensated; the order is
//! then REJECTED through the BFF's REST API.
//!
//! Chromium and chromedriver come from Debian (`deploy/setup.sh` installs
//! them); `CHROMEDRIVER` and `CHROMIUM` name other binaries. Every wait is a
//! bounded poll of the page, never a sleep. With `COMMERCE_SCREENSHOTS=1`
//! the test also writes the pictures in `docs/` (console-overview.png,
//! console-saga.png); otherwise it leaves them alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use commerce_e2e::node::free_port;
use commerce_proto::order::v1::{OrderState, SagaState};
use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::bff::{Bff, http};
use crate::harness::{self, Mesh};
use crate::shop;

const EXHAUSTED: &str = "STEP_RETRIES_EXHAUSTED";

/// The longest any one wait on the page may take.
const WAIT: Duration = Duration::from_secs(60);

/// A chromedriver child process on a free loopback port, in a process group
/// of its own that the Chromium it starts joins: dropping it ends both, so a
/// failed test leaves no browser behind.
pub(crate) struct ChromeDriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
}

impl ChromeDriver {
    /// Finds chromedriver and Chromium (failing at once, naming the setup
    /// script, when either is missing) and starts chromedriver.
    pub(crate) async fn start() -> Self {
        let program = binary("CHROMEDRIVER", "chromedriver")
            .unwrap_or_else(|| panic!("{}", missing("chromedriver", "CHROMEDRIVER")));
        let chromium = binary("CHROMIUM", "chromium")
            .or_else(|| Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()))
            .unwrap_or_else(|| panic!("{}", missing("chromium", "CHROMIUM")));
        let port = free_port();
        let child = Command::new(&program)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let driver = Self {
            child,
            port,
            chromium,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not listen on {addr} within 20 s",
                program.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new headless Chromium session, 1400 x 1000.
    pub(crate) async fn browser(&self) -> Client {
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                ],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromedriver starts a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; the shell's kill takes a
        // negative one as the whole group.
        let group = self.child.id();
        let killed = Command::new("sh")
            .args(["-c", &format!("kill -9 -{group}")])
            .status();
        if !matches!(killed, Ok(status) if status.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `$var` when it names a file, else `name` on PATH.
fn binary(var: &str, name: &str) -> Option<PathBuf> {
    let named = std::env::var_os(var).map(PathBuf::from);
    named.filter(|path| path.is_file()).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn missing(what: &str, var: &str) -> String {
    format!(
        "{what} not found (${var} names no file and there is none on PATH): \
         run `bash deploy/setup.sh`, which installs Debian's chromium and chromium-driver"
    )
}

/// Waits for the first element matching `css`; on timeout fails with what
/// the page shows (its error banner included).
pub(crate) async fn wait_for(browser: &Client, what: &str, css: &str) -> Element {
    match browser
        .wait()
        .at_most(WAIT)
        .every(Duration::from_millis(100))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(error) => {
            let page = browser
                .execute("return document.body.innerText;", vec![])
                .await
                .map(|text| text.as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            panic!("{what} (`{css}`): {error}; the page shows:\n{page}")
        }
    }
}

async fn count(browser: &Client, css: &str) -> usize {
    browser.find_all(Locator::Css(css)).await.unwrap().len()
}

/// Writes a screenshot to docs/`name` when COMMERCE_SCREENSHOTS=1.
pub(crate) async fn screenshot(browser: &Client, name: &str) {
    if std::env::var("COMMERCE_SCREENSHOTS").as_deref() != Ok("1") {
        return;
    }
    let png = browser.screenshot().await.unwrap();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("docs");
    let path = docs.join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("wrote {}", path.display());
}

#[tokio::test]
async fn an_operator_retries_a_stuck_saga_from_the_console() {
    // The browser first: without one the test fails before building a mesh.
    let driver = ChromeDriver::start().await;
    let mut mesh = Mesh::start(0).await;
    // As in failures.rs: forward retries give up after a second; an undo is
    // STUCK after three attempts and left alone for an hour, so only the
    // operator's retry can end it within the test.
    harness::add_stuck_prone_orchestrator(&mut mesh, "orchestrator-console").await;
    let bff = Bff::start(&mesh).await;

    // Some history for the counts: one order confirmed, one refused.
    let brand = shop::brand(&mesh, "Console").await;
    let lamp = shop::product(&mesh, brand, "Lamp", 7_000, 10).await;
    shop::charge(&mesh, "sam", 30_000).await;
    let confirmed = shop::place(&mesh, "sam", &[(lamp, 1)], None).await;
    assert_eq!(shop::state(&confirmed), OrderState::Confirmed);
    let refused = shop::place(&mesh, "sam", &[(lamp, 4)], None).await;
    assert_eq!(
        (shop::state(&refused), refused.reason.as_str()),
        (OrderState::Rejected, "POINT_INSUFFICIENT")
    );

    // The point service is away: deduct_points spends its budget, and
    // refund_points fails three times: STUCK.
    mesh.point.kill().await;
    let key = uuid::Uuid::new_v4().to_string();
    let placed = shop::place_pending(
        &mesh,
        &mesh.orders(),
        shop::request("sam", &[(lamp, 2)], None, &key),
    )
    .await;
    let saga_id = placed.saga_id.clone();
    shop::eventually(&mesh, "the saga STUCK", || async {
        let detail = shop::saga_detail(&mesh, &saga_id).await;
        (detail.saga.as_ref().unwrap().state == SagaState::Stuck as i32).then_some(())
    })
    .await;
    // The operator brings the point service back; the saga stays STUCK
    // until someone retries it.
    mesh.point.start().await;

    let browser = driver.browser().await;
    let token = bff.operator_token();
    browser
        .goto(&bff.at(&format!("/console#token={token}")))
        .await
        .unwrap();

    // The counts: the stuck saga, and the history.
    wait_for(
        &browser,
        "one stuck saga counted",
        "[data-testid=count-stuck][data-value='1']",
    )
    .await;
    let stuck_tile = browser
        .find(Locator::Css("[data-testid=count-stuck]"))
        .await
        .unwrap();
    assert!(stuck_tile.text().await.unwrap().contains('1'));
    wait_for(
        &browser,
        "one completed saga",
        "[data-testid=count-completed][data-value='1']",
    )
    .await;
    wait_for(
        &browser,
        "one compensated saga",
        "[data-testid=count-compensated][data-value='1']",
    )
    .await;
    wait_for(
        &browser,
        "the outbox tile",
        "[data-testid=outbox-pending][data-value]",
    )
    .await;
    // The token was taken from the fragment, which is gone from the address.
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.fragment(), None, "{url}");
    assert_eq!(url.path(), "/console");
    // The default view lists the unfinished sagas: only the stuck one.
    let row = format!("[data-testid=saga-row][data-saga-id='{saga_id}']");
    wait_for(&browser, "the stuck saga listed", &row).await;
    assert_eq!(count(&browser, "[data-testid=saga-row]").await, 1);
    screenshot(&browser, "console-overview.png").await;

    // Filtered by state: still that one saga.
    browser
        .find(Locator::Css("[data-testid=state-filter]"))
        .await
        .unwrap()
        .select_by_value("stuck")
        .await
        .unwrap();
    wait_for(&browser, "the stuck saga listed", &row)
        .await
        .click()
        .await
        .unwrap();

    // The detail, and its timeline drawn from the step log.
    let detail = wait_for(
        &browser,
        "the saga's detail",
        &format!("[data-testid=saga-detail][data-saga-id='{saga_id}'][data-state=stuck]"),
    )
    .await;
    assert!(detail.text().await.unwrap().contains(EXHAUSTED));
    wait_for(
        &browser,
        "the timeline",
        "[data-testid=timeline] [data-testid=timeline-entry]",
    )
    .await;
    let rejected = "[data-testid=timeline-entry][data-step=deduct_points][data-outcome=rejected]";
    assert_eq!(
        count(&browser, rejected).await,
        1,
        "deduct_points refused once"
    );
    let failed_undos = "[data-testid=timeline-entry][data-direction=compensate][data-step=refund_points][data-outcome=failed]";
    assert_eq!(
        count(&browser, failed_undos).await,
        3,
        "three failed undo attempts"
    );
    assert!(
        browser
            .find(Locator::Css("[data-testid=compensate-button]"))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap()
    );

    // Retry, confirmed in the page's own dialog.
    browser
        .find(Locator::Css("[data-testid=retry-button]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let dialog = wait_for(
        &browser,
        "the confirmation",
        "[data-testid=confirm-dialog][open]",
    )
    .await;
    let question = dialog.text().await.unwrap();
    assert!(question.contains("Retry runs the stuck step"), "{question}");
    assert!(question.contains(&saga_id), "{question}");
    dialog
        .find(Locator::Css("[data-testid=confirm-yes]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The console follows the saga until it is compensated.
    wait_for(
        &browser,
        "the saga compensated",
        "[data-testid=saga-detail][data-state=compensated]",
    )
    .await;
    for undo in ["refund_points", "release_stock"] {
        wait_for(
            &browser,
            &format!("{undo} undone on the timeline"),
            &format!(
                "[data-testid=timeline-entry][data-direction=compensate][data-step={undo}][data-outcome=succeeded]"
            ),
        )
        .await;
    }
    assert_eq!(
        count(&browser, "[data-testid=error-banner]:not([hidden])").await,
        0
    );
    assert!(
        !browser
            .find(Locator::Css("[data-testid=retry-button]"))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap()
    );
    wait_for(
        &browser,
        "no saga stuck",
        "[data-testid=count-stuck][data-value='0']",
    )
    .await;
    wait_for(
        &browser,
        "two compensated",
        "[data-testid=count-compensated][data-value='2']",
    )
    .await;
    // The picture shows the timeline's end, where the undo ran, below the
    // pane's pinned heading.
    browser
        .execute(
            "const pane = document.querySelector('[data-testid=saga-detail]'); \
             pane.scrollTop = pane.scrollHeight;",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&browser, "console-saga.png").await;
    browser.close().await.unwrap();
    drop(driver);

    // Through the REST API: the order was rejected, nothing paid.
    let order: Value = http()
        .get(bff.at(&format!("/api/v1/admin/orders/{}", placed.order_id)))
        .bearer_auth(bff.operator_token())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (order["state"].as_str(), order["reason"].as_str()),
        (Some("rejected"), Some(EXHAUSTED)),
        "{order:#}"
    );
    assert_eq!(order["pointsPaid"], 0, "{order:#}");
    assert_eq!(shop::balance(&mesh, "sam").await, 23_000);

    bff.stop().await;
    mesh.shutdown().await;
}
