//! A cancellation storm against each saga participant, called directly: a
//! few concurrent tasks mix calls with a normal deadline and calls whose
//! gRPC deadline is 1-40 ms, so the server drops many handlers while they
//! are inside the database. A cancelled call may fail; it must never leave a
//! connection out of step for the next request. So every answer that comes
//! back is about what was asked (the right user, product, coupon, saga),
//! every balance read is one the user's ledger held, nothing is INTERNAL,
//! and afterwards the stored state adds up (balance = ledger sum, stock
//! available + reserved + sold = initial, like counts = likes, issued counts
//! = coupons). The verdict does not depend on timing: how many calls are cut
//! varies from run to run, what an answer may say does not.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::time::Duration;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use diesel::sql_types::{BigInt, Text};
use futures::future::join_all;
use tonic::{Code, Request, Response, Status};

use crate::harness::Mesh;
use crate::invariants::{self, Coupons, Points, Rng, Violations, describe, with_deadline};

/// Concurrent callers per participant.
const TASKS: u64 = 6;
/// Calls per task: 2,400 per participant in all.
const CALLS: u64 = 400;
/// Deadline of the calls that are not meant to be cut.
const NORMAL: Duration = Duration::from_secs(10);
/// A settling call after the storm is sent until answered, five times at
/// most: nothing should fail then.
const SETTLE: [Duration; 5] = [NORMAL; 5];
/// How many samples of each kind of failure the report shows.
const SAMPLES: usize = 8;

/// Half the calls get a 1-40 ms deadline, the others [`NORMAL`].
fn pick_deadline(rng: &mut Rng) -> Duration {
    if rng.chance(50) {
        Duration::from_millis(1 + rng.below(40))
    } else {
        NORMAL
    }
}

/// The deadlines of a call and, when it may be cut and `again`, of the one
/// resend that comes in time.
fn resent(deadline: Duration, again: bool) -> Vec<Duration> {
    if deadline < NORMAL && again {
        vec![deadline, NORMAL]
    } else {
        vec![deadline]
    }
}

fn saga() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What is wrong with an answer.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// One field of the answer compared with what was asked.
    fn eq<T: PartialEq + Debug>(&mut self, field: &str, got: T, want: T) {
        if got != want {
            self.0.push(format!("{field} = {got:?}, expected {want:?}"));
        }
    }

    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }
}

/// What the calls of a storm came to.
#[derive(Default)]
struct Tally {
    calls: u64,
    short: u64,
    answered: u64,
    /// DEADLINE_EXCEEDED or CANCELLED: the call was cut, as intended.
    cut: u64,
    /// UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED: retryable by contract.
    transient: u64,
    /// Business refusals the call may legitimately get.
    refused: u64,
    internal: Vec<String>,
    unexpected: Vec<String>,
    wrong: Vec<String>,
}

impl Tally {
    /// Sends `request` with each of `deadlines` in turn until it is
    /// answered, every try a call. `check` lists what is wrong with the
    /// answer; a failure is classified, `legit` being the codes a business
    /// refusal of this call may have. The answer, if any.
    async fn send<M: Clone, T>(
        &mut self,
        what: &str,
        deadlines: &[Duration],
        legit: &[Code],
        request: M,
        mut call: impl AsyncFnMut(Request<M>) -> Result<Response<T>, Status>,
        check: impl Fn(&T, &mut Problems),
    ) -> Option<T> {
        for &deadline in deadlines {
            self.calls += 1;
            if deadline < NORMAL {
                self.short += 1;
            }
            match call(with_deadline(request.clone(), deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Problems::default();
                    check(&answer, &mut problems);
                    self.answered += 1;
                    if !problems.0.is_empty() {
                        self.wrong
                            .push(format!("{what}: {}", problems.0.join("; ")));
                    }
                    return Some(answer);
                }
                Err(status) => self.failed(what, &status, legit),
            }
        }
        None
    }

    fn failed(&mut self, what: &str, status: &Status, legit: &[Code]) {
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => self.cut += 1,
            Code::Unavailable | Code::Aborted | Code::ResourceExhausted => self.transient += 1,
            Code::Internal => self.internal.push(format!("{what}: {}", describe(status))),
            code if legit.contains(&code) => self.refused += 1,
            _ => self
                .unexpected
                .push(format!("{what}: {}", describe(status))),
        }
    }

    fn merge(&mut self, other: Self) {
        self.calls += other.calls;
        self.short += other.short;
        self.answered += other.answered;
        self.cut += other.cut;
        self.transient += other.transient;
        self.refused += other.refused;
        self.internal.extend(other.internal);
        self.unexpected.extend(other.unexpected);
        self.wrong.extend(other.wrong);
    }

    /// Prints the figures, then fails on any wrong answer, INTERNAL,
    /// unexpected status or broken invariant.
    fn verdict(&self, participant: &str, broken: &Violations, mesh: &Mesh) {
        let mut report = format!(
            "storm[{participant}]: {} calls ({} with a 1-40 ms deadline): {} answered, {} cut, \
             {} transient, {} refused; WRONG ANSWERS {}, INTERNAL {}, unexpected statuses {}, \
             broken invariants {}",
            self.calls,
            self.short,
            self.answered,
            self.cut,
            self.transient,
            self.refused,
            self.wrong.len(),
            self.internal.len(),
            self.unexpected.len(),
            broken.count()
        );
        for (title, list) in [
            ("wrong answers", &self.wrong),
            ("INTERNAL", &self.internal),
            ("unexpected statuses", &self.unexpected),
        ] {
            invariants::write_samples(&mut report, title, list, SAMPLES);
        }
        broken.write(&mut report, SAMPLES);
        println!("{report}");
        assert!(
            self.wrong.is_empty()
                && self.internal.is_empty()
                && self.unexpected.is_empty()
                && broken.count() == 0,
            "storm[{participant}]: {} wrong answers, {} INTERNAL, {} unexpected statuses, \
             {} broken invariants (details above); logs in {}",
            self.wrong.len(),
            self.internal.len(),
            self.unexpected.len(),
            broken.count(),
            mesh.log_dir.display()
        );
    }
}

/// Runs [`TASKS`] tasks concurrently, task `t` with the generator of seed
/// `seed + t`, and adds up their tallies; their states in task order.
async fn storm<S, Fut>(seed: u64, task: impl Fn(u64, Rng) -> Fut) -> (Tally, Vec<S>)
where
    Fut: Future<Output = (Tally, S)>,
{
    let results = join_all((0..TASKS).map(|t| task(t, Rng::new(seed + t)))).await;
    let mut tally = Tally::default();
    let mut states = Vec::new();
    for (t, s) in results {
        tally.merge(t);
        states.push(s);
    }
    (tally, states)
}

// ---------------------------------------------------------------- point

/// Users of the point storm. Every amount moved is a multiple of 1,000 and
/// user `i` starts with `5,000,000 + tag(i)`, so each user's balance always
/// ends in its own tag: a balance read from another user (or the `1` of a
/// connection check) can never pass for one of this user's.
const POINT_USERS: usize = 12;

fn point_user(i: usize) -> String {
    format!("storm-user-{i}")
}

fn tag(i: usize) -> i64 {
    7 * (i64::try_from(i).unwrap() + 1)
}

/// The charge user `i` starts with: its key and amount.
fn initial_charge(i: usize) -> (String, i64) {
    (format!("storm-initial-{i}"), 5_000_000 + tag(i))
}

/// A balance of user `i` ends in its tag.
fn tagged(problems: &mut Problems, field: &str, balance: i64, i: usize) {
    problems.eq(&format!("{field} {balance} % 1000"), balance % 1000, tag(i));
}

#[derive(Default)]
struct PointTask {
    /// Balances answered, per user index.
    seen: Vec<(usize, i64)>,
    /// Charge key -> (user, amount).
    charges: HashMap<String, (usize, i64)>,
    /// Deduct saga -> (user, amount).
    deducts: HashMap<String, (usize, i64)>,
}

async fn point_task(mesh: &Mesh, task: u64, mut rng: Rng) -> (Tally, PointTask) {
    let mut client = mesh.points();
    let mut tally = Tally::default();
    let mut state = PointTask::default();
    let mut open_deducts: Vec<String> = Vec::new();
    for n in 0..CALLS {
        let i = rng.index(POINT_USERS);
        let user = point_user(i);
        let deadline = pick_deadline(&mut rng);
        let roll = rng.below(100);
        if roll < 35 {
            let answer = tally
                .send(
                    &format!("GetBalance({user})"),
                    &[deadline],
                    &[],
                    point::GetBalanceRequest {
                        user_id: user.clone(),
                    },
                    async |r| client.get_balance(r).await,
                    |a, p| {
                        p.eq("user_id", a.user_id.as_str(), &user);
                        tagged(p, "balance", a.balance, i);
                    },
                )
                .await;
            state.seen.extend(answer.map(|a| (i, a.balance)));
        } else if roll < 45 {
            tally
                .send(
                    &format!("ListLedger({user})"),
                    &[deadline],
                    &[],
                    point::ListLedgerRequest {
                        user_id: user.clone(),
                        page: 0,
                        size: 5,
                    },
                    async |r| client.list_ledger(r).await,
                    |a, p| {
                        if a.total < i64::try_from(a.entries.len()).unwrap() {
                            p.add(format!("total {} < {} entries", a.total, a.entries.len()));
                        }
                        for e in &a.entries {
                            p.eq("entry.user_id", e.user_id.as_str(), &user);
                            tagged(p, "entry.balance_after", e.balance_after, i);
                        }
                    },
                )
                .await;
        } else if roll < 65 {
            let key = format!("storm-charge-{task}-{n}");
            let amount = 1_000 * rng.range(1, 20);
            state.charges.insert(key.clone(), (i, amount));
            // A cut charge is sometimes sent again under its key, in time.
            let again = deadline < NORMAL && rng.chance(50);
            let answer = tally
                .send(
                    &format!("Charge({user}, {amount}, {key})"),
                    &resent(deadline, again),
                    &[],
                    point::ChargeRequest {
                        user_id: user.clone(),
                        amount,
                        idempotency_key: key.clone(),
                    },
                    async |r| client.charge(r).await,
                    |a, p| {
                        let entry = a.entry.clone().unwrap_or_default();
                        p.eq("entry.user_id", entry.user_id.as_str(), &user);
                        p.eq("entry.amount", entry.amount, amount);
                        p.eq("entry.reference", entry.reference.as_str(), &key);
                        p.eq("entry.kind", entry.kind, point::LedgerKind::Charge as i32);
                        tagged(p, "balance", a.balance, i);
                    },
                )
                .await;
            state.seen.extend(answer.map(|a| (i, a.balance)));
        } else if roll < 85 || open_deducts.is_empty() {
            let saga = saga();
            let amount = 1_000 * rng.range(1, 5);
            state.deducts.insert(saga.clone(), (i, amount));
            open_deducts.push(saga.clone());
            let answer = tally
                .send(
                    &format!("DeductPoints({saga}, {user}, {amount})"),
                    &[deadline],
                    &[],
                    point::DeductPointsRequest {
                        saga_id: saga.clone(),
                        user_id: user.clone(),
                        amount,
                        saga_fence: 0,
                    },
                    async |r| client.deduct_points(r).await,
                    |a, p| {
                        p.eq("saga_id", a.saga_id.as_str(), &saga);
                        p.eq("user_id", a.user_id.as_str(), &user);
                        p.eq("deducted", a.deducted, amount);
                        tagged(p, "balance", a.balance, i);
                    },
                )
                .await;
            state.seen.extend(answer.map(|a| (i, a.balance)));
        } else {
            let saga = open_deducts.swap_remove(rng.index(open_deducts.len()));
            let (owner, amount) = state.deducts[&saga];
            let answer = tally
                .send(
                    &format!("RefundPoints({saga})"),
                    &[deadline],
                    &[],
                    point::RefundPointsRequest {
                        saga_id: saga.clone(),
                        saga_fence: 0,
                    },
                    async |r| client.refund_points(r).await,
                    |a, p| {
                        p.eq("saga_id", a.saga_id.as_str(), &saga);
                        if a.refunded {
                            p.eq("user_id", a.user_id.as_str(), &point_user(owner));
                            p.eq("amount", a.amount, amount);
                            tagged(p, "balance", a.balance, owner);
                        }
                    },
                )
                .await;
            let refunded = answer.filter(|a| a.refunded);
            state.seen.extend(refunded.map(|a| (owner, a.balance)));
        }
    }
    (tally, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_point_answers_are_about_what_was_asked() {
    let mesh = Mesh::start(0).await;
    let mut points = mesh.points();
    for i in 0..POINT_USERS {
        let (idempotency_key, amount) = initial_charge(i);
        points
            .charge(point::ChargeRequest {
                user_id: point_user(i),
                amount,
                idempotency_key,
            })
            .await
            .unwrap();
    }

    let (mut tally, tasks) = storm(0x5107_0000, |task, rng| point_task(&mesh, task, rng)).await;
    let mut charges: HashMap<String, (usize, i64)> = (0..POINT_USERS)
        .map(|i| {
            let (key, amount) = initial_charge(i);
            (key, (i, amount))
        })
        .collect();
    let mut deducts = HashMap::new();
    let mut seen = Vec::new();
    for task in tasks {
        charges.extend(task.charges);
        deducts.extend(task.deducts);
        seen.extend(task.seen);
    }

    // The truth, read from the database: each ledger chain adds up to its
    // balance, every entry is one a call asked for, and every balance
    // answered is one the ledger held.
    let stored = Points::read(&mesh).await;
    let mut broken = Violations::default();
    stored.check(&mut broken, &HashMap::new());
    let index: HashMap<String, usize> = (0..POINT_USERS).map(|i| (point_user(i), i)).collect();
    let mut held: Vec<HashSet<i64>> = vec![HashSet::new(); POINT_USERS];
    let mut used: HashMap<(&str, &str), i64> = HashMap::new();
    for row in &stored.ledger {
        let Some(&i) = index.get(&row.user_id) else {
            broken.add("ledger entry of an unknown user", row.user_id.clone());
            continue;
        };
        held[i].insert(row.balance_after);
        let asked = match row.kind.as_str() {
            "CHARGE" => charges.get(&row.reference).copied(),
            "USE" => deducts.get(&row.reference).map(|&(u, a)| (u, -a)),
            "REFUND" => used
                .get(&(row.user_id.as_str(), row.reference.as_str()))
                .map(|&a| (i, -a)),
            _ => None,
        };
        if asked != Some((i, row.amount)) {
            broken.add(
                "ledger entry no call asked for",
                format!(
                    "{}: {} {} of {} (asked {asked:?})",
                    row.user_id, row.kind, row.reference, row.amount
                ),
            );
        }
        if row.kind == "USE" {
            used.insert((&row.user_id, &row.reference), row.amount);
        }
    }
    for (i, balance) in seen {
        if !held[i].contains(&balance) {
            tally.wrong.push(format!(
                "{} read balance {balance}, which the ledger never held",
                point_user(i)
            ));
        }
    }
    // After the storm the API agrees with the database.
    for account in &stored.accounts {
        tally
            .send(
                &format!("GetBalance({}) after the storm", account.user_id),
                &[NORMAL],
                &[],
                point::GetBalanceRequest {
                    user_id: account.user_id.clone(),
                },
                async |r| points.get_balance(r).await,
                |a, p| p.eq("balance", a.balance, account.balance),
            )
            .await;
    }
    tally.verdict("point", &broken, &mesh);
    mesh.shutdown().await;
}

// -------------------------------------------------------------- product

const PRODUCTS: i64 = 8;
const INITIAL_STOCK: i64 = 100_000;
const LIKERS: i64 = 10;

/// Product `k` of the storm: distinct names and prices, two brands.
struct StormProduct {
    id: i64,
    name: String,
    price: i64,
    brand_id: i64,
    brand_name: String,
}

/// What the test knows about one of its reservations.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    /// ReserveStock was sent; whether it applied is unknown.
    Sent,
    /// ReserveStock answered: it applied.
    Reserved,
    /// ConfirmReservation was sent (it is never released afterwards).
    ConfirmSent,
    /// ReleaseReservation was sent (it is never confirmed afterwards).
    ReleaseSent,
}

/// Saga -> (lines asked, sorted by product, what is known).
type Sagas = HashMap<String, (Vec<(i64, i64)>, Held)>;

fn check_lines(
    problems: &mut Problems,
    got: &[product::ReservedLine],
    asked: &[(i64, i64)],
    products: &HashMap<i64, StormProduct>,
) {
    let got_lines: Vec<(i64, i64)> = got.iter().map(|l| (l.product_id, l.quantity)).collect();
    problems.eq("lines", got_lines.as_slice(), asked);
    for line in got {
        if let Some(p) = products.get(&line.product_id) {
            problems.eq("line.product_name", &line.product_name, &p.name);
            problems.eq("line.unit_price", line.unit_price, p.price);
            problems.eq("line.brand_name", &line.brand_name, &p.brand_name);
        }
    }
}

fn saga_request(saga: &str) -> product::SagaRequest {
    product::SagaRequest {
        saga_id: saga.to_owned(),
        saga_fence: 0,
    }
}

/// A reservation answered for `saga`: in `state`, with the lines asked.
fn check_reservation(
    problems: &mut Problems,
    got: &product::Reservation,
    saga: &str,
    state: product::ReservationState,
    asked: &[(i64, i64)],
    products: &HashMap<i64, StormProduct>,
) {
    problems.eq("saga_id", got.saga_id.as_str(), saga);
    problems.eq("state", got.state, state as i32);
    check_lines(problems, &got.lines, asked, products);
}

/// A release answered for `saga`: released when `must`, and the lines asked
/// when released.
fn check_release(
    problems: &mut Problems,
    got: &product::ReleaseReservationResponse,
    saga: &str,
    must: bool,
    asked: &[(i64, i64)],
    products: &HashMap<i64, StormProduct>,
) {
    problems.eq("saga_id", got.saga_id.as_str(), saga);
    if must {
        problems.eq("released", got.released, true);
    }
    if got.released {
        check_lines(problems, &got.lines, asked, products);
    }
}

fn check_product(problems: &mut Problems, got: &product::Product, want: &StormProduct) {
    problems.eq("id", got.id, want.id);
    problems.eq("name", &got.name, &want.name);
    problems.eq("price", got.price, want.price);
    problems.eq("brand_id", got.brand_id, want.brand_id);
    problems.eq("brand_name", &got.brand_name, &want.brand_name);
    if !(0..=LIKERS).contains(&got.like_count) {
        problems.add(format!(
            "like_count {} outside 0..={LIKERS}",
            got.like_count
        ));
    }
    match &got.stock {
        Some(s) => {
            problems.eq("stock.product_id", s.product_id, want.id);
            problems.eq(
                "stock.available + reserved + sold",
                s.available + s.reserved + s.sold,
                INITIAL_STOCK,
            );
        }
        None => problems.add("no stock".to_owned()),
    }
}

async fn product_task(
    mesh: &Mesh,
    products: &HashMap<i64, StormProduct>,
    mut rng: Rng,
) -> (Tally, Sagas) {
    use product::ReservationState::{Confirmed, Reserved};
    let mut catalog = mesh.catalog();
    let mut stock = mesh.stock();
    let mut tally = Tally::default();
    let mut sagas = Sagas::new();
    let mut ids: Vec<i64> = products.keys().copied().collect();
    ids.sort_unstable();
    for _ in 0..CALLS {
        let p = &products[&ids[rng.index(ids.len())]];
        let deadline = pick_deadline(&mut rng);
        let roll = rng.below(100);
        if roll < 35 {
            tally
                .send(
                    &format!("GetProduct({})", p.id),
                    &[deadline],
                    &[],
                    product::GetProductRequest { product_id: p.id },
                    async |r| catalog.get_product(r).await,
                    |a, problems| check_product(problems, a, p),
                )
                .await;
        } else if roll < 45 {
            let sort = [
                product::ProductSort::Latest,
                product::ProductSort::PriceAsc,
                product::ProductSort::LikesDesc,
            ][rng.index(3)];
            tally
                .send(
                    &format!("ListProducts(brand {}, {sort:?})", p.brand_id),
                    &[deadline],
                    &[],
                    product::ListProductsRequest {
                        brand_id: Some(p.brand_id),
                        sort: sort as i32,
                        page: 0,
                        size: 10,
                    },
                    async |r| catalog.list_products(r).await,
                    |a, problems| {
                        problems.eq("total", a.total, PRODUCTS / 2);
                        problems.eq(
                            "products.len()",
                            a.products.len(),
                            usize::try_from(PRODUCTS / 2).unwrap(),
                        );
                        for got in &a.products {
                            match products.get(&got.id) {
                                Some(want) if want.brand_id == p.brand_id => {
                                    check_product(problems, got, want);
                                }
                                _ => problems.add(format!("product {} of another brand", got.id)),
                            }
                        }
                    },
                )
                .await;
        } else if roll < 50 {
            tally
                .send(
                    &format!("GetBrand({})", p.brand_id),
                    &[deadline],
                    &[],
                    product::GetBrandRequest {
                        brand_id: p.brand_id,
                    },
                    async |r| catalog.get_brand(r).await,
                    |a, problems| {
                        problems.eq("id", a.id, p.brand_id);
                        problems.eq("name", &a.name, &p.brand_name);
                    },
                )
                .await;
        } else if roll < 70 {
            let like = rng.chance(60);
            let user = format!(
                "storm-liker-{}",
                rng.index(usize::try_from(LIKERS).unwrap())
            );
            let what = format!("{}({user}, {})", if like { "Like" } else { "Unlike" }, p.id);
            tally
                .send(
                    &what,
                    &[deadline],
                    &[],
                    product::LikeProductRequest {
                        user_id: user,
                        product_id: p.id,
                    },
                    async |r| {
                        if like {
                            catalog.like_product(r).await
                        } else {
                            catalog.unlike_product(r).await
                        }
                    },
                    |a, problems| {
                        problems.eq("product_id", a.product_id, p.id);
                        problems.eq("liked", a.liked, like);
                        if !(0..=LIKERS).contains(&a.like_count) {
                            problems.add(format!("like_count {}", a.like_count));
                        }
                    },
                )
                .await;
        } else if roll < 85 || sagas.is_empty() {
            let saga = saga();
            let mut lines = vec![(p.id, rng.range(1, 3))];
            let other = ids[rng.index(ids.len())];
            if other != p.id && rng.chance(50) {
                lines.push((other, rng.range(1, 3)));
            }
            lines.sort_unstable();
            sagas.insert(saga.clone(), (lines.clone(), Held::Sent));
            let answer = tally
                .send(
                    &format!("ReserveStock({saga}, {lines:?})"),
                    &[deadline],
                    &[],
                    product::ReserveStockRequest {
                        saga_id: saga.clone(),
                        lines: lines
                            .iter()
                            .map(|&(product_id, quantity)| product::ReserveLine {
                                product_id,
                                quantity,
                            })
                            .collect(),
                        saga_fence: 0,
                        ..Default::default()
                    },
                    async |r| stock.reserve_stock(r).await,
                    |a, problems| check_reservation(problems, a, &saga, Reserved, &lines, products),
                )
                .await;
            if answer.is_some() {
                sagas.insert(saga, (lines, Held::Reserved));
            }
        } else {
            // Confirm a reservation known to hold (now and then), or release
            // any reservation not confirmed.
            let open: Vec<&String> = sagas
                .iter()
                .filter(|(_, (_, held))| matches!(held, Held::Sent | Held::Reserved))
                .map(|(saga, _)| saga)
                .collect();
            let Some(&saga) = open.get(rng.index(open.len().max(1))) else {
                continue;
            };
            let saga = saga.clone();
            let (lines, held) = sagas[&saga].clone();
            if held == Held::Reserved && rng.chance(30) {
                sagas.insert(saga.clone(), (lines.clone(), Held::ConfirmSent));
                // Reserved and never released: no refusal is legitimate.
                tally
                    .send(
                        &format!("ConfirmReservation({saga}) after it was reserved"),
                        &[deadline],
                        &[],
                        saga_request(&saga),
                        async |r| stock.confirm_reservation(r).await,
                        |a, problems| {
                            check_reservation(problems, a, &saga, Confirmed, &lines, products);
                        },
                    )
                    .await;
            } else {
                sagas.insert(saga.clone(), (lines.clone(), Held::ReleaseSent));
                let must = held == Held::Reserved;
                tally
                    .send(
                        &format!("ReleaseReservation({saga})"),
                        &[deadline],
                        &[],
                        saga_request(&saga),
                        async |r| stock.release_reservation(r).await,
                        |a, problems| check_release(problems, a, &saga, must, &lines, products),
                    )
                    .await;
            }
        }
    }
    (tally, sagas)
}

#[derive(diesel::QueryableByName)]
struct ReservationLineRow {
    #[diesel(sql_type = Text)]
    saga_id: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_product_answers_are_about_what_was_asked() {
    use product::ReservationState::Confirmed;
    let mesh = Mesh::start(0).await;
    let mut products = HashMap::new();
    let mut brands = Vec::new();
    for b in ["Storm Brand North", "Storm Brand South"] {
        brands.push((crate::shop::brand(&mesh, b).await, b.to_owned()));
    }
    for k in 0..PRODUCTS {
        let (brand_id, brand_name) = brands[usize::try_from(k % 2).unwrap()].clone();
        let name = format!("storm-product-{k}");
        let price = 1_000 + 137 * k;
        let id = crate::shop::product(&mesh, brand_id, &name, price, INITIAL_STOCK).await;
        products.insert(
            id,
            StormProduct {
                id,
                name,
                price,
                brand_id,
                brand_name,
            },
        );
    }

    let (mut tally, tasks) = storm(0x9D0C_0000, |_, rng| product_task(&mesh, &products, rng)).await;
    let sagas: Sagas = tasks.into_iter().flatten().collect();

    // Settle every reservation: confirm those a confirmation was sent for
    // (a replay when it applied), release all others.
    let mut stock = mesh.stock();
    for (saga, (lines, held)) in &sagas {
        if *held == Held::ConfirmSent {
            tally
                .send(
                    &format!("ConfirmReservation({saga}) after the storm"),
                    &SETTLE,
                    &[],
                    saga_request(saga),
                    async |r| stock.confirm_reservation(r).await,
                    |a, problems| check_reservation(problems, a, saga, Confirmed, lines, &products),
                )
                .await;
        } else {
            tally
                .send(
                    &format!("ReleaseReservation({saga}) after the storm"),
                    &SETTLE,
                    &[],
                    saga_request(saga),
                    async |r| stock.release_reservation(r).await,
                    |a, problems| check_release(problems, a, saga, false, lines, &products),
                )
                .await;
        }
    }

    // The stored state adds up: every reservation ended, holding the lines
    // asked, and the stock sold is what the confirmed ones hold.
    let lines: Vec<ReservationLineRow> = invariants::load(
        &mesh,
        "product",
        "SELECT r.saga_id, r.state, l.product_id, l.quantity FROM reservations r, \
         JSON_TABLE(r.lines_json, '$[*]' COLUMNS (product_id BIGINT PATH '$.product_id', \
         quantity BIGINT PATH '$.quantity')) AS l",
    )
    .await;
    let mut broken = Violations::default();
    let mut sold: HashMap<i64, i64> = HashMap::new();
    let mut stored: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for line in &lines {
        if line.state == "CONFIRMED" {
            *sold.entry(line.product_id).or_default() += line.quantity;
        } else if line.state != "RELEASED" {
            broken.add(
                "reservation not ended",
                format!("{} still {} after the storm", line.saga_id, line.state),
            );
        }
        stored
            .entry(&line.saga_id)
            .or_default()
            .push((line.product_id, line.quantity));
    }
    for (saga, mut got) in stored {
        got.sort_unstable();
        match sagas.get(saga) {
            Some((asked, _)) if *asked == got => {}
            asked => broken.add(
                "reservation with other lines",
                format!(
                    "{saga} holds {got:?}, asked {:?}",
                    asked.map(|(lines, _)| lines)
                ),
            ),
        }
    }
    let stock = invariants::stock(&mesh).await;
    invariants::check_stock(&mut broken, &stock, |_| INITIAL_STOCK, &sold);
    tally.verdict("product", &broken, &mesh);
    mesh.shutdown().await;
}

// --------------------------------------------------------------- coupon

const COUPON_USERS: usize = 12;
/// Templates 0..ISSUED are issued to every user before the storm; the
/// others are issued during it.
const TEMPLATES: usize = 6;
const ISSUED: usize = 4;

fn coupon_user(i: usize) -> String {
    format!("storm-holder-{i}")
}

/// A template of the storm: FIXED, with a distinct name and amount.
struct StormTemplate {
    id: i64,
    name: String,
    value: i64,
}

#[derive(Default)]
struct CouponTask {
    /// Use saga -> (user, coupon).
    uses: HashMap<String, (usize, i64)>,
    /// Coupons issued during the storm: id -> (user, template index).
    issued: HashMap<i64, (usize, usize)>,
}

fn check_template(problems: &mut Problems, got: &coupon::CouponTemplate, want: &StormTemplate) {
    problems.eq("template.id", got.id, want.id);
    problems.eq("template.name", &got.name, &want.name);
    problems.eq("template.value", got.value, want.value);
    problems.eq(
        "template.kind",
        got.kind,
        coupon::DiscountKind::Fixed as i32,
    );
    if got.issued_quantity > got.total_quantity {
        problems.add(format!(
            "issued {} > total {}",
            got.issued_quantity, got.total_quantity
        ));
    }
}

/// A restore answered for `saga`, of coupon `id` when it restored one.
fn check_restore(
    problems: &mut Problems,
    got: &coupon::RestoreCouponResponse,
    saga: &str,
    id: i64,
) {
    problems.eq("saga_id", got.saga_id.as_str(), saga);
    if got.restored {
        problems.eq("user_coupon_id", got.user_coupon_id, id);
    }
}

async fn coupon_task(
    mesh: &Mesh,
    templates: &[StormTemplate],
    held: &HashMap<(usize, usize), i64>,
    task: u64,
    mut rng: Rng,
) -> (Tally, CouponTask) {
    let mut coupons = mesh.coupons();
    let mut admin = mesh.coupon_admin();
    let mut tally = Tally::default();
    let mut state = CouponTask::default();
    let by_id: HashMap<i64, usize> = templates
        .iter()
        .enumerate()
        .map(|(k, t)| (t.id, k))
        .collect();
    // This task alone uses and restores the coupons of its two users.
    let own = [
        usize::try_from(2 * task).unwrap(),
        usize::try_from(2 * task + 1).unwrap(),
    ];
    for n in 0..CALLS {
        let deadline = pick_deadline(&mut rng);
        let roll = rng.below(100);
        if roll < 25 {
            let t = &templates[rng.index(TEMPLATES)];
            tally
                .send(
                    &format!("GetTemplate({})", t.id),
                    &[deadline],
                    &[],
                    coupon::GetTemplateRequest { template_id: t.id },
                    async |r| admin.get_template(r).await,
                    |a, p| check_template(p, a, t),
                )
                .await;
        } else if roll < 45 {
            let i = rng.index(COUPON_USERS);
            let user = coupon_user(i);
            tally
                .send(
                    &format!("ListUserCoupons({user})"),
                    &[deadline],
                    &[],
                    coupon::ListUserCouponsRequest {
                        user_id: user.clone(),
                        page: 0,
                        size: 20,
                    },
                    async |r| coupons.list_user_coupons(r).await,
                    |a, p| {
                        let count = i64::try_from(a.coupons.len()).unwrap();
                        if a.total < count || count < i64::try_from(ISSUED).unwrap() {
                            p.add(format!("{count} coupons, total {}", a.total));
                        }
                        for c in &a.coupons {
                            p.eq("coupon.user_id", c.user_id.as_str(), &user);
                            let template = c.template.clone().unwrap_or_default();
                            let Some(&k) = by_id.get(&template.id) else {
                                p.add(format!("unknown template {}", template.id));
                                continue;
                            };
                            check_template(p, &template, &templates[k]);
                            if let Some(&id) = held.get(&(i, k)) {
                                p.eq("coupon.id", c.id, id);
                            }
                        }
                    },
                )
                .await;
        } else if roll < 60 {
            let i = rng.index(COUPON_USERS);
            let k = rng.index(ISSUED);
            let id = held[&(i, k)];
            let amount = 1_000 * rng.range(1, 50);
            let discount = templates[k].value.min(amount);
            // Another task may hold the coupon used at this moment.
            tally
                .send(
                    &format!("QuoteDiscount({}, {id}, {amount})", coupon_user(i)),
                    &[deadline],
                    &[Code::FailedPrecondition],
                    coupon::QuoteDiscountRequest {
                        user_id: coupon_user(i),
                        user_coupon_id: id,
                        order_amount: amount,
                    },
                    async |r| coupons.quote_discount(r).await,
                    |a, p| {
                        p.eq("user_coupon_id", a.user_coupon_id, id);
                        p.eq("order_amount", a.order_amount, amount);
                        p.eq("discount", a.discount, discount);
                        p.eq("payable", a.payable, amount - discount);
                    },
                )
                .await;
        } else if roll < 75 {
            let i = rng.index(COUPON_USERS);
            let k = ISSUED + rng.index(TEMPLATES - ISSUED);
            let user = coupon_user(i);
            // One per user per template.
            let answer = tally
                .send(
                    &format!("IssueCoupon({}, {user})", templates[k].id),
                    &[deadline],
                    &[Code::AlreadyExists],
                    coupon::IssueCouponRequest {
                        template_id: templates[k].id,
                        user_id: user.clone(),
                    },
                    async |r| coupons.issue_coupon(r).await,
                    |a, p| {
                        p.eq("user_id", a.user_id.as_str(), &user);
                        let template = a.template.clone().unwrap_or_default();
                        check_template(p, &template, &templates[k]);
                    },
                )
                .await;
            state.issued.extend(answer.map(|a| (a.id, (i, k))));
        } else {
            // Use one of this task's coupons under a new saga, then restore
            // it (in time or not: every use is restored after the storm).
            let i = own[rng.index(2)];
            let k = rng.index(ISSUED);
            let id = held[&(i, k)];
            let amount = 1_000 * rng.range(5, 50);
            let saga = saga();
            state.uses.insert(saga.clone(), (i, id));
            let discount = templates[k].value.min(amount);
            // Still used by an earlier saga whose restore was cut.
            tally
                .send(
                    &format!("UseCoupon({saga}, {}, {id}, {amount})", coupon_user(i)),
                    &[deadline],
                    &[Code::FailedPrecondition],
                    coupon::UseCouponRequest {
                        saga_id: saga.clone(),
                        user_id: coupon_user(i),
                        user_coupon_id: id,
                        order_amount: amount,
                        expected_discount: Some(discount),
                        saga_fence: 0,
                    },
                    async |r| coupons.use_coupon(r).await,
                    |a, p| {
                        p.eq("saga_id", a.saga_id.as_str(), &saga);
                        p.eq("user_coupon_id", a.user_coupon_id, id);
                        p.eq("discount", a.discount, discount);
                    },
                )
                .await;
            // A cut restore is sent again in time, so the coupon is free
            // for the next use.
            let restore = pick_deadline(&mut rng);
            tally
                .send(
                    &format!("RestoreCoupon({saga}) #{n}"),
                    &resent(restore, true),
                    &[],
                    coupon::RestoreCouponRequest {
                        saga_id: saga.clone(),
                        saga_fence: 0,
                    },
                    async |r| coupons.restore_coupon(r).await,
                    |a, p| check_restore(p, a, &saga, id),
                )
                .await;
        }
    }
    (tally, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_coupon_answers_are_about_what_was_asked() {
    let mesh = Mesh::start(0).await;
    let mut admin = mesh.coupon_admin();
    let now = std::time::SystemTime::now();
    let mut templates = Vec::new();
    for k in 0..TEMPLATES {
        let value = 1_000 + 250 * i64::try_from(k).unwrap();
        let name = format!("storm-coupon-{k}");
        let id = admin
            .create_template(coupon::CreateTemplateRequest {
                name: name.clone(),
                kind: coupon::DiscountKind::Fixed as i32,
                value,
                max_discount: None,
                min_order_amount: 0,
                valid_from: Some((now - Duration::from_secs(3_600)).into()),
                valid_until: Some((now + Duration::from_secs(30 * 86_400)).into()),
                total_quantity: 1_000,
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        templates.push(StormTemplate { id, name, value });
    }
    let mut held = HashMap::new();
    for i in 0..COUPON_USERS {
        for (k, t) in templates.iter().enumerate().take(ISSUED) {
            held.insert(
                (i, k),
                crate::shop::issue(&mesh, t.id, &coupon_user(i)).await,
            );
        }
    }

    let (mut tally, tasks) = storm(0xC0_0000, |task, rng| {
        coupon_task(&mesh, &templates, &held, task, rng)
    })
    .await;
    let mut uses = HashMap::new();
    let mut issued = HashMap::new();
    for task in tasks {
        uses.extend(task.uses);
        issued.extend(task.issued);
    }

    // Restore every use (a replay, or a no-op when it never applied).
    let mut coupons = mesh.coupons();
    for (saga, &(_, id)) in &uses {
        tally
            .send(
                &format!("RestoreCoupon({saga}) after the storm"),
                &SETTLE,
                &[],
                coupon::RestoreCouponRequest {
                    saga_id: saga.clone(),
                    saga_fence: 0,
                },
                async |r| coupons.restore_coupon(r).await,
                |a, p| check_restore(p, a, saga, id),
            )
            .await;
    }

    // The stored state adds up: every coupon is AVAILABLE again, each
    // template issued as many as it counts, and each coupon issued during
    // the storm is the user's and template's its answer said.
    let stored = Coupons::read(&mesh).await;
    let mut broken = Violations::default();
    stored.check(&mut broken, &HashMap::new());
    for row in &stored.coupons {
        if let Some(&(i, k)) = issued.get(&row.id)
            && (row.user_id != coupon_user(i) || row.template_id != templates[k].id)
        {
            broken.add(
                "coupon issued as another",
                format!(
                    "coupon {} is {}'s of template {}, answered as {}'s of {}",
                    row.id,
                    row.user_id,
                    row.template_id,
                    coupon_user(i),
                    templates[k].id
                ),
            );
        }
    }
    tally.verdict("coupon", &broken, &mesh);
    mesh.shutdown().await;
}
