//! A chaos run: a few hundred orders from several clients while a random
//! server (the orchestrator or a participant) is killed with SIGKILL and
//! restarted every few seconds. Clients send PlaceOrder again under the same
//! idempotency key whenever a call gets no answer, and each client places
//! the orders of its own users one after another, so the test knows each
//! user's balance and coupons when an order starts and can tell what the
//! order must come to. Once the kills stop and every saga has ended, every
//! invariant is checked on the stored data: stock adds up, balances are
//! initial - what confirmed orders paid = ledger sum, a coupon is used iff
//! exactly one confirmed order carries it, everything is terminal, and no
//! order was rejected for a reason the data cannot explain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use commerce_proto::order::v1 as order;
use commerce_proto::order::v1::order_service_client::OrderServiceClient;
use commerce_testkit::TestChannel as Channel;
use commerce_testkit::error_reason;
use diesel::sql_types::{BigInt, Nullable, Text};
use futures::future::join_all;
use tokio::time::Instant;
use tonic::{Code, Response, Status};

use crate::harness::Mesh;
use crate::invariants::{self, Coupons, Points, Rng, Violations, describe, with_deadline};
use crate::shop;

/// Concurrent clients; each owns [`USERS_PER_CLIENT`] users.
const CLIENTS: usize = 8;
const USERS_PER_CLIENT: usize = 3;
/// Orders placed in all.
const ORDERS: usize = 480;
/// Kills, one every 1-3 s (fewer if the orders are all placed first).
const KILLS: usize = 10;
/// No new order after this long.
const LOAD_BUDGET: Duration = Duration::from_secs(50);
/// How long one order may take to end, outages included.
const ORDER_BUDGET: Duration = Duration::from_secs(60);
/// Units of every plentiful product: more than all orders can take.
const PLENTY: i64 = 10_000;
/// Units of the scarce product: fewer than the orders ask for.
const SCARCE: i64 = 25;
/// How many samples of each kind of violation the report shows.
const SAMPLES: usize = 10;

/// A product of the shop.
#[derive(Clone)]
struct Item {
    price: i64,
    initial: i64,
}

/// A coupon template: FIXED `value` off orders of at least `min_order`.
#[derive(Clone, Copy)]
struct Terms {
    value: i64,
    min_order: i64,
}

/// A user as its client knows it between two of its orders (all earlier
/// orders ended).
#[derive(Clone)]
struct Buyer {
    name: String,
    charged: i64,
    paid: i64,
    /// (coupon id, terms).
    coupons: Vec<(i64, Terms)>,
    used: HashSet<i64>,
    /// An earlier order did not end in time: what this user has is unknown.
    unsure: bool,
}

/// What an order must come to, from what its user had when it started.
#[derive(Debug, Clone)]
struct Expected {
    subtotal: i64,
    discount: i64,
    payable: i64,
    /// Reasons it may be rejected with.
    reasons: Vec<&'static str>,
    may_confirm: bool,
    /// False when the user's state was unknown at the start.
    sure: bool,
}

/// One order as its client saw it.
struct Placed {
    user: String,
    key: String,
    lines: Vec<(i64, i64)>,
    coupon: Option<i64>,
    expected: Expected,
    /// The final order, if it ended within [`ORDER_BUDGET`].
    settled: Option<order::Order>,
    /// PlaceOrder calls sent (1 when the first one was answered).
    sends: u32,
}

/// What the clients saw go wrong.
#[derive(Default)]
struct Seen {
    /// Transient failures by call and code (retried).
    transient: BTreeMap<String, u64>,
    /// INTERNAL answers from a server, and other statuses no call may get.
    bad_status: Vec<String>,
}

impl Seen {
    fn transient(&mut self, call: &str, status: &Status) {
        *self
            .transient
            .entry(format!("{call} {:?}", status.code()))
            .or_default() += 1;
    }
}

/// A failure a client simply retries: the server is down or restarting, or
/// the call was cut. An INTERNAL with an `ErrorInfo` is the server's own
/// (a bug); one without comes from the transport.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::ResourceExhausted => true,
        Code::Internal => error_reason(status).is_none(),
        _ => false,
    }
}

fn terminal(o: &order::Order) -> bool {
    matches!(
        shop::state(o),
        order::OrderState::Confirmed | order::OrderState::Rejected
    )
}

/// A deadline for a client's call: mostly patient, but a quarter of the
/// calls give up after 1-25 ms (a client going away), which cancels the
/// server's handler wherever it is.
fn patience(rng: &mut Rng, patient: Duration) -> Duration {
    if rng.chance(25) {
        rng.millis(1, 25)
    } else {
        patient
    }
}

/// Sends a call until it is answered or `deadline` passes: a transient
/// failure is counted under the call's name (`what` up to its parenthesis)
/// and retried; any other is reported as `what` and retried until there
/// were `refusals` of them. The answer, and the calls sent.
async fn until_answered<T>(
    seen: &mut Seen,
    what: &str,
    deadline: Instant,
    refusals: u32,
    mut call: impl AsyncFnMut() -> Result<Response<T>, Status>,
) -> (Option<T>, u32) {
    let name = what.split('(').next().unwrap_or(what);
    let mut sends = 0;
    let mut refused = 0;
    while Instant::now() < deadline {
        sends += 1;
        match call().await {
            Ok(answer) => return (Some(answer.into_inner()), sends),
            Err(status) if retryable(&status) => seen.transient(name, &status),
            Err(status) => {
                seen.bad_status
                    .push(format!("{what}: {}", describe(&status)));
                refused += 1;
                if refused >= refusals {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (None, sends)
}

/// Places the order, sending it again under its key until answered, then
/// reads it until it has ended; `None` past [`ORDER_BUDGET`].
async fn place_and_settle(
    client: &mut OrderServiceClient<Channel>,
    request: &order::PlaceOrderRequest,
    rng: &mut Rng,
    seen: &mut Seen,
) -> (Option<order::Order>, u32) {
    let deadline = Instant::now() + ORDER_BUDGET;
    let what = format!(
        "PlaceOrder({}, {})",
        request.user_id, request.idempotency_key
    );
    // A refusal is reported; the key still makes sending again safe, a few
    // times.
    let (mut current, sends) = until_answered(seen, &what, deadline, 3, async || {
        let timeout = patience(rng, Duration::from_secs(3));
        client
            .place_order(with_deadline(request.clone(), timeout))
            .await
    })
    .await;
    let mut pause = Duration::from_millis(20);
    while let Some(o) = current.take() {
        if terminal(&o) {
            return (Some(o), sends);
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
        let what = format!("GetOrder({})", o.order_id);
        let get = shop::get_order_request(&o.user_id, &o.order_id);
        (current, _) = until_answered(seen, &what, deadline, u32::MAX, async || {
            let timeout = patience(rng, Duration::from_secs(2));
            client.get_order(with_deadline(get.clone(), timeout)).await
        })
        .await;
    }
    (None, sends)
}

/// What an order of `lines` with `coupon` must come to for `buyer`.
fn expect(
    buyer: &Buyer,
    lines: &[(i64, i64)],
    coupon: Option<i64>,
    items: &HashMap<i64, Item>,
) -> Expected {
    let subtotal: i64 = lines.iter().map(|&(p, q)| items[&p].price * q).sum();
    let mut reasons = Vec::new();
    let mut discount = 0;
    if let Some(c) = coupon {
        let terms = buyer
            .coupons
            .iter()
            .find(|(id, _)| *id == c)
            .map(|&(_, t)| t)
            .unwrap();
        if buyer.used.contains(&c) {
            reasons.push("COUPON_ALREADY_USED");
        } else if subtotal < terms.min_order {
            reasons.push("COUPON_MIN_ORDER_NOT_MET");
        } else {
            discount = terms.value.min(subtotal);
        }
    }
    let payable = subtotal - discount;
    if reasons.is_empty() && payable > buyer.charged - buyer.paid {
        reasons.push("POINT_INSUFFICIENT");
    }
    let may_confirm = reasons.is_empty();
    if lines.iter().any(|&(p, _)| items[&p].initial == SCARCE) {
        reasons.push("STOCK_INSUFFICIENT");
    }
    Expected {
        subtotal,
        discount,
        payable,
        reasons,
        may_confirm,
        sure: !buyer.unsure,
    }
}

/// One client: the orders of its users, one at a time.
async fn client(
    c: usize,
    channel: Channel,
    mut buyers: Vec<Buyer>,
    items: &HashMap<i64, Item>,
    next_order: &AtomicUsize,
    started: Instant,
) -> (Vec<Placed>, Seen, Vec<Buyer>) {
    let mut orders = OrderServiceClient::new(channel);
    let mut rng = Rng::new(0xC4A0_5000 + c as u64);
    let mut ids: Vec<i64> = items.keys().copied().collect();
    ids.sort_unstable();
    let scarce: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|p| items[p].initial == SCARCE)
        .collect();
    let plenty: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|p| items[p].initial == PLENTY)
        .collect();
    let mut placed = Vec::new();
    let mut seen = Seen::default();
    for n in 0.. {
        if started.elapsed() > LOAD_BUDGET || next_order.fetch_add(1, Ordering::SeqCst) >= ORDERS {
            break;
        }
        let b = n % buyers.len();
        let mut lines = vec![(plenty[rng.index(plenty.len())], 1 + rng.below(3) as i64)];
        if rng.chance(40) {
            let other = plenty[rng.index(plenty.len())];
            if other != lines[0].0 {
                lines.push((other, 1 + rng.below(3) as i64));
            }
        }
        if rng.chance(12) {
            lines.push((scarce[0], 1 + rng.below(3) as i64));
        }
        lines.sort_unstable();
        let coupon = if rng.chance(35) {
            let coupons = &buyers[b].coupons;
            Some(coupons[rng.index(coupons.len())].0)
        } else {
            None
        };
        let expected = expect(&buyers[b], &lines, coupon, items);
        let key = format!("chaos-{c}-{n}");
        let request = shop::request(&buyers[b].name, &lines, coupon, &key);
        let (settled, sends) = place_and_settle(&mut orders, &request, &mut rng, &mut seen).await;
        let buyer = &mut buyers[b];
        match &settled {
            Some(o) if shop::state(o) == order::OrderState::Confirmed => {
                buyer.paid += o.points_paid;
                if let Some(c) = coupon {
                    buyer.used.insert(c);
                }
            }
            Some(_) => {}
            None => buyer.unsure = true,
        }
        placed.push(Placed {
            user: buyer.name.clone(),
            key,
            lines,
            coupon,
            expected,
            settled,
            sends,
        });
        tokio::time::sleep(rng.millis(80, 250)).await;
    }
    (placed, seen, buyers)
}

/// Kills a random server every 1-3 s, keeps it down 0.1-1 s and starts it
/// again (waiting until it serves), at most [`KILLS`] times and only while
/// orders are being placed. Returns the kills per server.
async fn killer(mesh: &mut Mesh, load_done: &AtomicBool) -> BTreeMap<&'static str, usize> {
    let mut rng = Rng::new(0x0C4A_0511);
    let mut kills = BTreeMap::new();
    // Rounds of the four servers in a shuffled order, the orchestrator
    // twice (each kill also cancels its calls in flight at participants).
    let mut schedule: Vec<usize> = Vec::new();
    while schedule.len() < KILLS {
        let mut round = vec![0, 0, 1, 2, 3];
        for i in (1..round.len()).rev() {
            round.swap(i, rng.index(i + 1));
        }
        schedule.extend(round);
    }
    for &target in schedule.iter().take(KILLS) {
        tokio::time::sleep(rng.millis(800, 2_000)).await;
        if load_done.load(Ordering::SeqCst) {
            break;
        }
        let (name, node) = match target {
            0 => ("orchestrator", &mut mesh.orchestrators[0]),
            1 => ("product", &mut mesh.product),
            2 => ("point", &mut mesh.point),
            _ => ("coupon", &mut mesh.coupon),
        };
        node.kill().await;
        *kills.entry(name).or_default() += 1;
        tokio::time::sleep(rng.millis(100, 1_000)).await;
        node.start().await;
    }
    kills
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(diesel::QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    user_coupon_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    subtotal: i64,
    #[diesel(sql_type = BigInt)]
    discount: i64,
    #[diesel(sql_type = BigInt)]
    points_paid: i64,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    reason_message: String,
    #[diesel(sql_type = Text)]
    saga_id: String,
}

#[derive(diesel::QueryableByName)]
struct LineRow {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
}

#[derive(diesel::QueryableByName)]
struct SagaRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(diesel::QueryableByName)]
struct LogRow {
    #[diesel(sql_type = Text)]
    saga_id: String,
    #[diesel(sql_type = Text)]
    step_name: String,
    #[diesel(sql_type = Text)]
    direction: String,
    #[diesel(sql_type = Text)]
    outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Waits (polling, bounded) until the saga admin counts no unfinished saga
/// and no order is waiting for one.
async fn wait_all_terminal(mesh: &Mesh) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let counts = mesh
            .sagas()
            .count_sagas(with_deadline(
                order::CountSagasRequest {},
                Duration::from_secs(2),
            ))
            .await;
        if let Ok(counts) = counts {
            let c = counts.into_inner();
            let pending: Vec<Count> = invariants::load(
                mesh,
                "order",
                "SELECT COUNT(*) AS n FROM orders WHERE state NOT IN ('CONFIRMED', 'REJECTED')",
            )
            .await;
            if c.running + c.compensating + c.stuck == 0 && pending[0].n == 0 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// An order placed, as stored: as its client saw it end, with the lines and
/// coupon asked, terminal together with its saga, and (when its user's state
/// was known at its start) with the amounts and the outcome that state
/// implies.
fn check_order(
    violations: &mut Violations,
    p: &Placed,
    o: &OrderRow,
    lines_of: &HashMap<&str, Vec<(i64, i64)>>,
    saga_of: &HashMap<&str, &SagaRow>,
) {
    let what = format!(
        "{} {} {} lines {:?} coupon {:?}",
        o.id, p.user, p.key, p.lines, p.coupon
    );
    if let Some(seen) = &p.settled
        && (shop::state(seen).as_str_name() != format!("ORDER_STATE_{}", o.state)
            || seen.reason != o.reason)
    {
        violations.add(
            "client saw another end than stored",
            format!(
                "{what}: saw {:?} {}, stored {} {}",
                shop::state(seen),
                seen.reason,
                o.state,
                o.reason
            ),
        );
    }
    let mut stored_lines = lines_of.get(o.id.as_str()).cloned().unwrap_or_default();
    stored_lines.sort_unstable();
    if stored_lines != p.lines || o.user_coupon_id != p.coupon {
        violations.add(
            "order stored with other lines",
            format!("{what}: stored {stored_lines:?} {:?}", o.user_coupon_id),
        );
    }
    match saga_of.get(o.saga_id.as_str()) {
        Some(s)
            if s.order_id == o.id
                && s.kind == "PLACE_ORDER"
                && matches!(
                    (o.state.as_str(), s.state.as_str()),
                    ("CONFIRMED", "COMPLETED") | ("REJECTED", "COMPENSATED")
                ) => {}
        s => violations.add(
            "order and saga not terminal together",
            format!(
                "{what}: order {} saga {:?}",
                o.state,
                s.map(|s| (&s.kind, &s.state))
            ),
        ),
    }
    let e = &p.expected;
    match o.state.as_str() {
        "CONFIRMED" => {
            if (o.subtotal, o.discount, o.points_paid) != (e.subtotal, e.discount, e.payable) {
                violations.add(
                    "confirmed order with wrong amounts",
                    format!(
                        "{what}: subtotal/discount/paid {}/{}/{}, expected {}/{}/{}",
                        o.subtotal, o.discount, o.points_paid, e.subtotal, e.discount, e.payable
                    ),
                );
            }
            if e.sure && !e.may_confirm {
                violations.add(
                    "confirmed although it had to be rejected",
                    format!("{what}: expected one of {:?}", e.reasons),
                );
            }
        }
        "REJECTED" => {
            if o.points_paid != 0 {
                violations.add(
                    "rejected order shows points paid",
                    format!("{what}: {} {} paid {}", o.state, o.reason, o.points_paid),
                );
            }
            if e.sure && !e.reasons.contains(&o.reason.as_str()) {
                violations.add(
                    "rejection the data cannot explain",
                    format!(
                        "{what}: {} ({}), expected {}",
                        o.reason,
                        o.reason_message,
                        if e.may_confirm {
                            format!("CONFIRMED or {:?}", e.reasons)
                        } else {
                            format!("{:?}", e.reasons)
                        }
                    ),
                );
            }
        }
        state => violations.add("order not terminal", format!("{what}: {state}")),
    }
}

/// Participant failures the orchestrator logged, by step and code:
/// transient ones are expected around the kills; INTERNAL and refused undos
/// are not.
fn participant_failures(violations: &mut Violations, log: &[LogRow]) -> BTreeMap<String, usize> {
    let mut failures = BTreeMap::new();
    for e in log {
        let error = e.error.clone().unwrap_or_default();
        let code = error.split(':').next().unwrap_or_default().to_owned();
        if e.outcome == "FAILED" {
            *failures
                .entry(format!("{} {}", e.step_name, code))
                .or_default() += 1;
            let transient = matches!(
                code.as_str(),
                "Unavailable"
                    | "DeadlineExceeded"
                    | "Cancelled"
                    | "Unknown"
                    | "Aborted"
                    | "ResourceExhausted"
            ) || (code == "Internal" && !error.contains("internal error"));
            if !transient {
                violations.add(
                    "participant failure that is not transient",
                    format!(
                        "saga {} {} {}: {error}",
                        e.saga_id, e.step_name, e.direction
                    ),
                );
            }
        } else if e.direction != "FORWARD" {
            violations.add(
                "undo refused",
                format!("saga {} {}: {error}", e.saga_id, e.step_name),
            );
        }
    }
    failures
}

/// What the servers logged as internal errors (each with its cause, a
/// violation), per server; and, per server, the connections the MySQL server
/// closed on it (it does so when a connection sends out of turn): a sign,
/// not a violation.
fn server_logs(
    violations: &mut Violations,
    mesh: &Mesh,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut internal_logged = BTreeMap::new();
    let mut closed_logged = BTreeMap::new();
    for node in [
        &mesh.orchestrators[0],
        &mesh.product,
        &mesh.point,
        &mesh.coupon,
    ] {
        let text = std::fs::read_to_string(node.log()).unwrap_or_default();
        let closed = text
            .lines()
            .filter(|l| l.contains("Connection to the server is closed"))
            .count();
        if closed > 0 {
            closed_logged.insert(node.service.to_owned(), closed);
        }
        for line in text.lines().map(plain) {
            // What `ServiceError::Internal` logs when it becomes a status.
            if let Some(at) = line.find("commerce_platform::error: internal error") {
                *internal_logged.entry(node.service.to_owned()).or_default() += 1;
                // The method, from the request span's prefix.
                let call = line
                    .split_once("rpc.method=")
                    .and_then(|(_, method)| method.split([' ', '}']).next())
                    .map_or("?", |method| method.trim_matches('"'));
                violations.add(
                    "internal error in a server log",
                    format!(
                        "{} {call}: {}",
                        node.service,
                        line[at..].chars().take(240).collect::<String>()
                    ),
                );
            }
        }
    }
    (internal_logged, closed_logged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_orders_keep_every_invariant_while_servers_are_killed() {
    let started = Instant::now();
    let mut mesh = Mesh::start(1).await;

    // The shop: five plentiful products, one scarce; two coupons a user.
    let brand = shop::brand(&mesh, "Chaos").await;
    let mut items = HashMap::new();
    for (name, price, initial) in [
        ("Tee", 1_000, PLENTY),
        ("Cap", 2_500, PLENTY),
        ("Mug", 4_000, PLENTY),
        ("Bag", 7_000, PLENTY),
        ("Coat", 12_000, PLENTY),
        ("Limited", 3_000, SCARCE),
    ] {
        let id = shop::product(&mesh, brand, name, price, initial).await;
        items.insert(id, Item { price, initial });
    }
    let ten_off = Terms {
        value: 3_000,
        min_order: 10_000,
    };
    let small_off = Terms {
        value: 1_500,
        min_order: 0,
    };
    let ten_off_id =
        shop::fixed_template(&mesh, ten_off.value, ten_off.min_order, 1_000, false).await;
    let small_off_id =
        shop::fixed_template(&mesh, small_off.value, small_off.min_order, 1_000, false).await;
    // Rich users can pay for every order they place, middling ones for a
    // few, poor ones for almost none.
    let mut buyers = Vec::new();
    for i in 0..CLIENTS * USERS_PER_CLIENT {
        let name = format!("chaos-user-{i}");
        let charged = match i % 4 {
            0 | 1 => 3_000_000,
            2 => 60_000,
            _ => 3_000,
        };
        shop::charge(&mesh, &name, charged).await;
        let coupons = vec![
            (shop::issue(&mesh, ten_off_id, &name).await, ten_off),
            (shop::issue(&mesh, small_off_id, &name).await, small_off),
        ];
        buyers.push(Buyer {
            name,
            charged,
            paid: 0,
            coupons,
            used: HashSet::new(),
            unsure: false,
        });
    }

    // The load and the kills, together.
    let channel = mesh.orchestrator().channel();
    let next_order = AtomicUsize::new(0);
    let load_done = AtomicBool::new(false);
    let load_started = Instant::now();
    let load = async {
        let results = join_all(buyers.chunks(USERS_PER_CLIENT).enumerate().map(|(c, own)| {
            client(
                c,
                channel.clone(),
                own.to_vec(),
                &items,
                &next_order,
                load_started,
            )
        }))
        .await;
        load_done.store(true, Ordering::SeqCst);
        results
    };
    let (results, kills) = tokio::join!(load, killer(&mut mesh, &load_done));
    let load_time = load_started.elapsed();
    let mut placed = Vec::new();
    let mut seen = Seen::default();
    let mut buyers = Vec::new();
    for (p, s, b) in results {
        placed.extend(p);
        for (k, v) in s.transient {
            *seen.transient.entry(k).or_default() += v;
        }
        seen.bad_status.extend(s.bad_status);
        buyers.extend(b);
    }

    // Everything is up again: every saga must end.
    let mut violations = Violations::default();
    if !wait_all_terminal(&mesh).await {
        violations.add(
            "not terminal within a minute after the kills",
            "see the sagas below".to_owned(),
        );
    }
    for s in &seen.bad_status {
        violations.add("INTERNAL or unexpected status to a client", s.clone());
    }

    // Every order placed is stored once, under its key, as placed and as
    // its client saw it end, and nothing else; every saga ended.
    let orders: Vec<OrderRow> = invariants::load(
        &mesh,
        "order",
        "SELECT id, user_id, idempotency_key, state, user_coupon_id, subtotal, discount, \
         points_paid, reason, reason_message, saga_id FROM orders",
    )
    .await;
    let lines: Vec<LineRow> = invariants::load(
        &mesh,
        "order",
        "SELECT o.id AS order_id, j.product_id, j.quantity FROM orders o, \
         JSON_TABLE(o.lines_json, '$[*]' COLUMNS (product_id BIGINT PATH '$.product_id', \
         quantity BIGINT PATH '$.quantity')) AS j",
    )
    .await;
    let sagas: Vec<SagaRow> = invariants::load(
        &mesh,
        "order",
        "SELECT id, kind, order_id, state FROM sagas",
    )
    .await;
    let by_key: HashMap<(&str, &str), &OrderRow> = orders
        .iter()
        .map(|o| ((o.user_id.as_str(), o.idempotency_key.as_str()), o))
        .collect();
    if orders.len() != placed.len() || by_key.len() != orders.len() {
        violations.add(
            "orders stored vs placed",
            format!("{} stored, {} placed", orders.len(), placed.len()),
        );
    }
    let mut lines_of: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for l in &lines {
        lines_of
            .entry(l.order_id.as_str())
            .or_default()
            .push((l.product_id, l.quantity));
    }
    let saga_of: HashMap<&str, &SagaRow> = sagas.iter().map(|s| (s.id.as_str(), s)).collect();
    for p in &placed {
        match by_key.get(&(p.user.as_str(), p.key.as_str())) {
            Some(o) => check_order(&mut violations, p, o, &lines_of, &saga_of),
            None => violations.add(
                "order lost",
                format!("{} {} was never stored", p.user, p.key),
            ),
        }
    }
    for s in &sagas {
        if !matches!(s.state.as_str(), "COMPLETED" | "COMPENSATED") {
            violations.add(
                "saga not terminal",
                format!("saga {} of order {}: {}", s.id, s.order_id, s.state),
            );
        }
    }
    let log: Vec<LogRow> = invariants::load(
        &mesh,
        "order",
        "SELECT saga_id, step_name, direction, outcome, error FROM saga_log \
         WHERE outcome IN ('FAILED', 'REJECTED') ORDER BY seq",
    )
    .await;
    let failures = participant_failures(&mut violations, &log);
    let (internal_logged, closed_logged) = server_logs(&mut violations, &mesh);

    // The participants agree with the confirmed orders: the units sold are
    // theirs, each balance is charged - what they paid, and a coupon is USED
    // iff exactly one of them carries it, by its saga.
    let confirmed: Vec<&OrderRow> = orders.iter().filter(|o| o.state == "CONFIRMED").collect();
    let mut sold: HashMap<i64, i64> = HashMap::new();
    let mut balances: HashMap<&str, i64> = buyers
        .iter()
        .map(|b| (b.name.as_str(), b.charged))
        .collect();
    let mut carried: HashMap<i64, Vec<&str>> = HashMap::new();
    for o in &confirmed {
        for &(p, q) in lines_of.get(o.id.as_str()).into_iter().flatten() {
            *sold.entry(p).or_default() += q;
        }
        if let Some(balance) = balances.get_mut(o.user_id.as_str()) {
            *balance -= o.points_paid;
        }
        if let Some(c) = o.user_coupon_id {
            carried.entry(c).or_default().push(&o.saga_id);
        }
    }
    let initial = |p| items.get(&p).map_or(0, |i: &Item| i.initial);
    invariants::check_stock(
        &mut violations,
        &invariants::stock(&mesh).await,
        initial,
        &sold,
    );
    Points::read(&mesh).await.check(&mut violations, &balances);
    Coupons::read(&mesh).await.check(&mut violations, &carried);

    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.state == "REJECTED") {
        *reasons.entry(&o.reason).or_default() += 1;
    }
    let mut report = format!(
        "chaos: {} orders placed in {:.1}s by {CLIENTS} clients ({} PlaceOrder sends), \
         {} confirmed, {} rejected {reasons:?}\n  kills: {kills:?} ({} in all)\n  \
         orders of users in an unknown state: {}\n  transient failures seen by clients: \
         {:?}\n  participant failures in the saga log: {failures:?}\n  internal errors in \
         server logs: {internal_logged:?}\n  database connections closed by the server \
         (server logs): {closed_logged:?}\n  VIOLATIONS: {}",
        placed.len(),
        load_time.as_secs_f64(),
        placed.iter().map(|p| p.sends).sum::<u32>(),
        confirmed.len(),
        placed.len() - confirmed.len(),
        kills.values().sum::<usize>(),
        placed.iter().filter(|p| !p.expected.sure).count(),
        seen.transient,
        violations.count()
    );
    violations.write(&mut report, SAMPLES);
    let _ = write!(
        report,
        "\n  total time {:.1}s",
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    assert!(
        violations.count() == 0,
        "chaos: {} violations (details above); logs in {}",
        violations.count(),
        mesh.log_dir.display()
    );
    mesh.shutdown().await;
}
