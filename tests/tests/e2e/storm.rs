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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use commerce_testkit::error_reason;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use futures::future::join_all;
use tonic::{Code, Request, Status};

use crate::harness::Mesh;

/// Concurrent callers per participant.
const TASKS: u64 = 6;
/// Calls per task: 2,400 per participant in all.
const CALLS: u64 = 400;
/// Deadline of the calls that are not meant to be cut.
const NORMAL: Duration = Duration::from_secs(10);
/// How many samples of each kind of failure the report shows.
const SAMPLES: usize = 8;

/// SplitMix64: a seeded, dependency-free generator, so every run sends the
/// same sequence of calls (their timing is what varies).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap()
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::try_from(self.below(u64::try_from(hi - lo + 1).unwrap())).unwrap()
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Half the calls get a 1-40 ms deadline, the others [`NORMAL`].
    fn deadline(&mut self) -> Duration {
        if self.chance(50) {
            Duration::from_millis(1 + self.below(40))
        } else {
            NORMAL
        }
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

fn saga() -> String {
    uuid::Uuid::new_v4().to_string()
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
    fn call(&mut self, deadline: Duration) {
        self.calls += 1;
        if deadline < NORMAL {
            self.short += 1;
        }
    }

    /// Counts a failed call; `legit` are the codes a business refusal of
    /// this call may have.
    fn failed(&mut self, what: &str, status: &Status, legit: &[Code]) {
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => self.cut += 1,
            Code::Unavailable | Code::Aborted | Code::ResourceExhausted => self.transient += 1,
            Code::Internal => self.internal.push(format!(
                "{what}: {:?} {}",
                error_reason(status),
                status.message()
            )),
            code if legit.contains(&code) => self.refused += 1,
            _ => self.unexpected.push(format!(
                "{what}: {:?} {:?} {}",
                status.code(),
                error_reason(status),
                status.message()
            )),
        }
    }

    /// Counts an answer, wrong unless `problems` is empty.
    fn answer(&mut self, what: &str, problems: &[String]) {
        self.answered += 1;
        if !problems.is_empty() {
            self.wrong.push(format!("{what}: {}", problems.join("; ")));
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
    fn verdict(&self, participant: &str, broken: &[String], mesh: &Mesh) {
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
            broken.len()
        );
        for (title, list) in [
            ("wrong answers", &self.wrong),
            ("INTERNAL", &self.internal),
            ("unexpected statuses", &self.unexpected),
            ("broken invariants", &broken.to_vec()),
        ] {
            if !list.is_empty() {
                let _ = write!(report, "\n  {title} (first {SAMPLES}):");
                for line in list.iter().take(SAMPLES) {
                    let _ = write!(report, "\n    {line}");
                }
            }
        }
        println!("{report}");
        assert!(
            self.wrong.is_empty()
                && self.internal.is_empty()
                && self.unexpected.is_empty()
                && broken.is_empty(),
            "storm[{participant}]: {} wrong answers, {} INTERNAL, {} unexpected statuses, \
             {} broken invariants (details above); logs in {}",
            self.wrong.len(),
            self.internal.len(),
            self.unexpected.len(),
            broken.len(),
            mesh.log_dir.display()
        );
    }
}

/// Compares one field of an answer with what was asked.
fn expect<T: PartialEq + std::fmt::Debug>(
    problems: &mut Vec<String>,
    field: &str,
    got: T,
    want: T,
) {
    if got != want {
        problems.push(format!("{field} = {got:?}, expected {want:?}"));
    }
}

/// Runs `body` for each task concurrently and adds up their tallies.
async fn storm<S, F, Fut>(states: Vec<S>, body: F) -> (Tally, Vec<S>)
where
    F: Fn(u64, S) -> Fut,
    Fut: Future<Output = (Tally, S)>,
{
    let results = join_all(
        states
            .into_iter()
            .zip(0..)
            .map(|(state, task)| body(task, state)),
    )
    .await;
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

#[derive(Default)]
struct PointTask {
    /// Balances answered, per user index.
    seen: Vec<(usize, i64)>,
    /// Charge key -> (user, amount).
    charges: HashMap<String, (usize, i64)>,
    /// Deduct saga -> (user, amount).
    deducts: HashMap<String, (usize, i64)>,
}

#[derive(diesel::QueryableByName)]
struct LedgerRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = BigInt)]
    balance_after: i64,
    #[diesel(sql_type = Text)]
    reference: String,
}

#[derive(diesel::QueryableByName)]
struct AccountRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = BigInt)]
    balance: i64,
}

async fn point_task(mesh: &Mesh, task: u64, mut state: PointTask) -> (Tally, PointTask) {
    let mut client = mesh.points();
    let mut rng = Rng::new(0x5107_0000 + task);
    let mut tally = Tally::default();
    let mut open_deducts: Vec<String> = Vec::new();
    for n in 0..CALLS {
        let i = rng.index(POINT_USERS);
        let user = point_user(i);
        let deadline = rng.deadline();
        tally.call(deadline);
        let roll = rng.below(100);
        if roll < 35 {
            let what = format!("GetBalance({user})");
            let request = point::GetBalanceRequest {
                user_id: user.clone(),
            };
            match client.get_balance(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "user_id", answer.user_id.as_str(), &user);
                    expect(
                        &mut problems,
                        "balance % 1000",
                        answer.balance % 1000,
                        tag(i),
                    );
                    state.seen.push((i, answer.balance));
                    tally.answer(&format!("{what} = {}", answer.balance), &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 45 {
            let what = format!("ListLedger({user})");
            let request = point::ListLedgerRequest {
                user_id: user.clone(),
                page: 0,
                size: 5,
            };
            match client.list_ledger(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    if answer.total < i64::try_from(answer.entries.len()).unwrap() {
                        problems.push(format!(
                            "total {} < {} entries",
                            answer.total,
                            answer.entries.len()
                        ));
                    }
                    for e in &answer.entries {
                        expect(&mut problems, "entry.user_id", e.user_id.as_str(), &user);
                        expect(
                            &mut problems,
                            "entry.balance_after % 1000",
                            e.balance_after % 1000,
                            tag(i),
                        );
                    }
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 65 {
            let key = format!("storm-charge-{task}-{n}");
            let amount = 1_000 * rng.range(1, 20);
            state.charges.insert(key.clone(), (i, amount));
            // A cut charge is sometimes sent again under its key, in time.
            let tries = if deadline < NORMAL && rng.chance(50) {
                vec![deadline, NORMAL]
            } else {
                vec![deadline]
            };
            for (k, deadline) in tries.into_iter().enumerate() {
                if k > 0 {
                    tally.call(deadline);
                }
                let what = format!("Charge({user}, {amount}, {key})");
                let request = point::ChargeRequest {
                    user_id: user.clone(),
                    amount,
                    idempotency_key: key.clone(),
                };
                match client.charge(with_deadline(request, deadline)).await {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        let mut problems = Vec::new();
                        let entry = answer.entry.unwrap_or_default();
                        expect(
                            &mut problems,
                            "entry.user_id",
                            entry.user_id.as_str(),
                            &user,
                        );
                        expect(&mut problems, "entry.amount", entry.amount, amount);
                        expect(
                            &mut problems,
                            "entry.reference",
                            entry.reference.as_str(),
                            &key,
                        );
                        expect(
                            &mut problems,
                            "entry.kind",
                            entry.kind,
                            point::LedgerKind::Charge as i32,
                        );
                        expect(
                            &mut problems,
                            "balance % 1000",
                            answer.balance % 1000,
                            tag(i),
                        );
                        state.seen.push((i, answer.balance));
                        tally.answer(&what, &problems);
                        break;
                    }
                    Err(status) => tally.failed(&what, &status, &[]),
                }
            }
        } else if roll < 85 || open_deducts.is_empty() {
            let saga = saga();
            let amount = 1_000 * rng.range(1, 5);
            state.deducts.insert(saga.clone(), (i, amount));
            open_deducts.push(saga.clone());
            let what = format!("DeductPoints({saga}, {user}, {amount})");
            let request = point::DeductPointsRequest {
                saga_id: saga.clone(),
                user_id: user.clone(),
                amount,
            };
            match client.deduct_points(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                    expect(&mut problems, "user_id", answer.user_id.as_str(), &user);
                    expect(&mut problems, "deducted", answer.deducted, amount);
                    expect(
                        &mut problems,
                        "balance % 1000",
                        answer.balance % 1000,
                        tag(i),
                    );
                    state.seen.push((i, answer.balance));
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else {
            let saga = open_deducts.swap_remove(rng.index(open_deducts.len()));
            let (owner, amount) = state.deducts[&saga];
            let what = format!("RefundPoints({saga})");
            let request = point::RefundPointsRequest {
                saga_id: saga.clone(),
            };
            match client.refund_points(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                    if answer.refunded {
                        expect(
                            &mut problems,
                            "user_id",
                            answer.user_id.as_str(),
                            &point_user(owner),
                        );
                        expect(&mut problems, "amount", answer.amount, amount);
                        expect(
                            &mut problems,
                            "balance % 1000",
                            answer.balance % 1000,
                            tag(owner),
                        );
                        state.seen.push((owner, answer.balance));
                    }
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        }
    }
    (tally, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_point_answers_are_about_what_was_asked() {
    let mesh = Mesh::start(0).await;
    let mut points = mesh.points();
    for i in 0..POINT_USERS {
        points
            .charge(point::ChargeRequest {
                user_id: point_user(i),
                amount: 5_000_000 + tag(i),
                idempotency_key: format!("storm-initial-{i}"),
            })
            .await
            .unwrap();
    }

    let states = (0..TASKS).map(|_| PointTask::default()).collect();
    let (mut tally, states) = storm(states, |task, state| point_task(&mesh, task, state)).await;

    // The truth, read from the database: the ledger and the balances.
    let mut db = mesh.database("point").connect().await.unwrap();
    let ledger: Vec<LedgerRow> = diesel::sql_query(
        "SELECT user_id, kind, amount, balance_after, reference FROM point_ledger ORDER BY id",
    )
    .load(&mut db)
    .await
    .unwrap();
    let accounts: Vec<AccountRow> =
        diesel::sql_query("SELECT user_id, balance FROM point_accounts")
            .load(&mut db)
            .await
            .unwrap();
    let mut broken = Vec::new();
    let mut charges: HashMap<String, (usize, i64)> = (0..POINT_USERS)
        .map(|i| (format!("storm-initial-{i}"), (i, 5_000_000 + tag(i))))
        .collect();
    let mut deducts = HashMap::new();
    let mut seen = Vec::new();
    for state in states {
        charges.extend(state.charges);
        deducts.extend(state.deducts);
        seen.extend(state.seen);
    }
    let mut held: Vec<HashSet<i64>> = vec![HashSet::new(); POINT_USERS];
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    let mut used: HashMap<(String, String), i64> = HashMap::new();
    let index: HashMap<String, usize> = (0..POINT_USERS).map(|i| (point_user(i), i)).collect();
    for row in &ledger {
        let Some(&i) = index.get(&row.user_id) else {
            broken.push(format!("ledger entry of unknown user {}", row.user_id));
            continue;
        };
        let sum = sums.entry(row.user_id.clone()).or_default();
        *sum += row.amount;
        if row.balance_after != *sum {
            broken.push(format!(
                "{}: entry {} {} has balance_after {}, the chain gives {sum}",
                row.user_id, row.kind, row.reference, row.balance_after
            ));
        }
        held[i].insert(row.balance_after);
        let asked = match row.kind.as_str() {
            "CHARGE" => charges.get(&row.reference).map(|&(u, a)| (u, a)),
            "USE" => deducts.get(&row.reference).map(|&(u, a)| (u, -a)),
            "REFUND" => used
                .get(&(row.user_id.clone(), row.reference.clone()))
                .map(|&a| (i, -a)),
            _ => None,
        };
        if asked != Some((i, row.amount)) {
            broken.push(format!(
                "{}: {} {} of {} matches no call (asked {asked:?})",
                row.user_id, row.kind, row.reference, row.amount
            ));
        }
        if row.kind == "USE" {
            used.insert((row.user_id.clone(), row.reference.clone()), row.amount);
        }
    }
    for account in &accounts {
        let sum = sums.get(&account.user_id).copied().unwrap_or_default();
        if account.balance != sum {
            broken.push(format!(
                "{}: balance {} != ledger sum {sum}",
                account.user_id, account.balance
            ));
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
    for account in &accounts {
        tally.call(NORMAL);
        let what = format!("GetBalance({}) after the storm", account.user_id);
        let request = point::GetBalanceRequest {
            user_id: account.user_id.clone(),
        };
        match points.get_balance(with_deadline(request, NORMAL)).await {
            Ok(answer) => {
                let mut problems = Vec::new();
                expect(
                    &mut problems,
                    "balance",
                    answer.into_inner().balance,
                    account.balance,
                );
                tally.answer(&what, &problems);
            }
            Err(status) => tally.failed(&what, &status, &[]),
        }
    }
    tally.verdict("point", &broken, &mesh);
    mesh.shutdown().await;
}

// -------------------------------------------------------------- product

const PRODUCTS: i64 = 8;
const INITIAL_STOCK: i64 = 100_000;
const LIKERS: usize = 10;

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

#[derive(Default)]
struct ProductTask {
    /// Saga -> (lines asked, sorted by product, what is known).
    sagas: HashMap<String, (Vec<(i64, i64)>, Held)>,
}

fn check_lines(
    problems: &mut Vec<String>,
    got: &[product::ReservedLine],
    asked: &[(i64, i64)],
    products: &HashMap<i64, StormProduct>,
) {
    let got_lines: Vec<(i64, i64)> = got.iter().map(|l| (l.product_id, l.quantity)).collect();
    expect(problems, "lines", got_lines.as_slice(), asked);
    for line in got {
        if let Some(p) = products.get(&line.product_id) {
            expect(problems, "line.product_name", &line.product_name, &p.name);
            expect(problems, "line.unit_price", line.unit_price, p.price);
            expect(problems, "line.brand_name", &line.brand_name, &p.brand_name);
        }
    }
}

fn check_product(
    problems: &mut Vec<String>,
    got: &product::Product,
    want: &StormProduct,
    likers: i64,
) {
    expect(problems, "id", got.id, want.id);
    expect(problems, "name", &got.name, &want.name);
    expect(problems, "price", got.price, want.price);
    expect(problems, "brand_id", got.brand_id, want.brand_id);
    expect(problems, "brand_name", &got.brand_name, &want.brand_name);
    if !(0..=likers).contains(&got.like_count) {
        problems.push(format!(
            "like_count {} outside 0..={likers}",
            got.like_count
        ));
    }
    match &got.stock {
        Some(s) => {
            expect(problems, "stock.product_id", s.product_id, want.id);
            expect(
                problems,
                "stock.available + reserved + sold",
                s.available + s.reserved + s.sold,
                INITIAL_STOCK,
            );
        }
        None => problems.push("no stock".to_owned()),
    }
}

async fn product_task(
    mesh: &Mesh,
    products: &HashMap<i64, StormProduct>,
    task: u64,
    mut state: ProductTask,
) -> (Tally, ProductTask) {
    let mut catalog = mesh.catalog();
    let mut stock = mesh.stock();
    let mut rng = Rng::new(0x9D0C_0000 + task);
    let mut tally = Tally::default();
    let ids: Vec<i64> = {
        let mut ids: Vec<i64> = products.keys().copied().collect();
        ids.sort_unstable();
        ids
    };
    let likers = i64::try_from(LIKERS).unwrap();
    for _ in 0..CALLS {
        let p = &products[&ids[rng.index(ids.len())]];
        let deadline = rng.deadline();
        tally.call(deadline);
        let roll = rng.below(100);
        if roll < 35 {
            let what = format!("GetProduct({})", p.id);
            let request = product::GetProductRequest { product_id: p.id };
            match catalog.get_product(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let mut problems = Vec::new();
                    check_product(&mut problems, &answer.into_inner(), p, likers);
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 45 {
            let sort = [
                product::ProductSort::Latest,
                product::ProductSort::PriceAsc,
                product::ProductSort::LikesDesc,
            ][rng.index(3)];
            let what = format!("ListProducts(brand {}, {sort:?})", p.brand_id);
            let request = product::ListProductsRequest {
                brand_id: Some(p.brand_id),
                sort: sort as i32,
                page: 0,
                size: 10,
            };
            match catalog
                .list_products(with_deadline(request, deadline))
                .await
            {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "total", answer.total, PRODUCTS / 2);
                    expect(
                        &mut problems,
                        "products.len()",
                        answer.products.len(),
                        usize::try_from(PRODUCTS / 2).unwrap(),
                    );
                    for got in &answer.products {
                        match products.get(&got.id) {
                            Some(want) if want.brand_id == p.brand_id => {
                                check_product(&mut problems, got, want, likers);
                            }
                            _ => problems.push(format!("product {} of another brand", got.id)),
                        }
                    }
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 50 {
            let what = format!("GetBrand({})", p.brand_id);
            let request = product::GetBrandRequest {
                brand_id: p.brand_id,
            };
            match catalog.get_brand(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "id", answer.id, p.brand_id);
                    expect(&mut problems, "name", &answer.name, &p.brand_name);
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 70 {
            let like = rng.chance(60);
            let user = format!("storm-liker-{}", rng.index(LIKERS));
            let what = format!("{}({user}, {})", if like { "Like" } else { "Unlike" }, p.id);
            let request = with_deadline(
                product::LikeProductRequest {
                    user_id: user,
                    product_id: p.id,
                },
                deadline,
            );
            let answer = if like {
                catalog.like_product(request).await
            } else {
                catalog.unlike_product(request).await
            };
            match answer {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "product_id", answer.product_id, p.id);
                    expect(&mut problems, "liked", answer.liked, like);
                    if !(0..=likers).contains(&answer.like_count) {
                        problems.push(format!("like_count {}", answer.like_count));
                    }
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 85 || state.sagas.is_empty() {
            let saga = saga();
            let mut lines = vec![(p.id, rng.range(1, 3))];
            let other = ids[rng.index(ids.len())];
            if other != p.id && rng.chance(50) {
                lines.push((other, rng.range(1, 3)));
            }
            lines.sort_unstable();
            state
                .sagas
                .insert(saga.clone(), (lines.clone(), Held::Sent));
            let what = format!("ReserveStock({saga}, {lines:?})");
            let request = product::ReserveStockRequest {
                saga_id: saga.clone(),
                lines: lines
                    .iter()
                    .map(|&(product_id, quantity)| product::ReserveLine {
                        product_id,
                        quantity,
                    })
                    .collect(),
            };
            match stock.reserve_stock(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                    expect(
                        &mut problems,
                        "state",
                        answer.state,
                        product::ReservationState::Reserved as i32,
                    );
                    check_lines(&mut problems, &answer.lines, &lines, products);
                    state.sagas.insert(saga, (lines, Held::Reserved));
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else {
            // Confirm a reservation known to hold (now and then), or release
            // any reservation not confirmed.
            let open: Vec<&String> = state
                .sagas
                .iter()
                .filter(|(_, (_, held))| matches!(held, Held::Sent | Held::Reserved))
                .map(|(saga, _)| saga)
                .collect();
            let Some(&saga) = open.get(rng.index(open.len().max(1))) else {
                continue;
            };
            let saga = saga.clone();
            let (lines, held) = state.sagas[&saga].clone();
            if held == Held::Reserved && rng.chance(30) {
                state
                    .sagas
                    .insert(saga.clone(), (lines.clone(), Held::ConfirmSent));
                let what = format!("ConfirmReservation({saga}) after it was reserved");
                let request = product::SagaRequest {
                    saga_id: saga.clone(),
                };
                match stock
                    .confirm_reservation(with_deadline(request, deadline))
                    .await
                {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        let mut problems = Vec::new();
                        expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                        expect(
                            &mut problems,
                            "state",
                            answer.state,
                            product::ReservationState::Confirmed as i32,
                        );
                        check_lines(&mut problems, &answer.lines, &lines, products);
                        tally.answer(&what, &problems);
                    }
                    // Reserved and never released: no refusal is legitimate.
                    Err(status) => tally.failed(&what, &status, &[]),
                }
            } else {
                state
                    .sagas
                    .insert(saga.clone(), (lines.clone(), Held::ReleaseSent));
                let what = format!("ReleaseReservation({saga})");
                let request = product::SagaRequest {
                    saga_id: saga.clone(),
                };
                match stock
                    .release_reservation(with_deadline(request, deadline))
                    .await
                {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        let mut problems = Vec::new();
                        expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                        if held == Held::Reserved {
                            expect(&mut problems, "released", answer.released, true);
                        }
                        if answer.released {
                            check_lines(&mut problems, &answer.lines, &lines, products);
                        }
                        tally.answer(&what, &problems);
                    }
                    Err(status) => tally.failed(&what, &status, &[]),
                }
            }
        }
    }
    (tally, state)
}

#[derive(diesel::QueryableByName)]
struct StockRow {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    available: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
    #[diesel(sql_type = BigInt)]
    sold: i64,
    #[diesel(sql_type = BigInt)]
    like_count: i64,
    #[diesel(sql_type = BigInt)]
    likes: i64,
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

/// Sends a settling call until it is answered (a few tries: after the
/// storm nothing should fail); the failures count in `tally`.
async fn settle<T, F, Fut>(tally: &mut Tally, what: &str, legit: &[Code], mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    for _ in 0..5 {
        tally.call(NORMAL);
        match call().await {
            Ok(answer) => return Some(answer.into_inner()),
            Err(status) if legit.contains(&status.code()) => {
                tally.refused += 1;
                return None;
            }
            Err(status) => tally.failed(what, &status, legit),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_product_answers_are_about_what_was_asked() {
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

    let states = (0..TASKS).map(|_| ProductTask::default()).collect();
    let (mut tally, states) = storm(states, |task, state| {
        product_task(&mesh, &products, task, state)
    })
    .await;

    // Settle every reservation: confirm those a confirmation was sent for
    // (a replay when it applied), release all others.
    let stock = mesh.stock();
    let mut sagas = HashMap::new();
    for state in states {
        sagas.extend(state.sagas);
    }
    for (saga, (lines, held)) in &sagas {
        let request = || product::SagaRequest {
            saga_id: saga.clone(),
        };
        if *held == Held::ConfirmSent {
            let what = format!("ConfirmReservation({saga}) after the storm");
            if let Some(answer) = settle(&mut tally, &what, &[], || {
                let mut stock = stock.clone();
                let request = with_deadline(request(), NORMAL);
                async move { stock.confirm_reservation(request).await }
            })
            .await
            {
                let mut problems = Vec::new();
                expect(&mut problems, "saga_id", answer.saga_id.as_str(), saga);
                expect(
                    &mut problems,
                    "state",
                    answer.state,
                    product::ReservationState::Confirmed as i32,
                );
                check_lines(&mut problems, &answer.lines, lines, &products);
                tally.answer(&what, &problems);
            }
        } else {
            let what = format!("ReleaseReservation({saga}) after the storm");
            if let Some(answer) = settle(&mut tally, &what, &[], || {
                let mut stock = stock.clone();
                let request = with_deadline(request(), NORMAL);
                async move { stock.release_reservation(request).await }
            })
            .await
            {
                let mut problems = Vec::new();
                expect(&mut problems, "saga_id", answer.saga_id.as_str(), saga);
                if answer.released {
                    check_lines(&mut problems, &answer.lines, lines, &products);
                }
                tally.answer(&what, &problems);
            }
        }
    }

    // The stored state adds up.
    let mut db = mesh.database("product").connect().await.unwrap();
    let rows: Vec<StockRow> = diesel::sql_query(
        "SELECT s.product_id, s.available, s.reserved, s.sold, p.like_count, \
         (SELECT COUNT(*) FROM product_likes l WHERE l.product_id = p.id) AS likes \
         FROM product_stock s JOIN products p ON p.id = s.product_id",
    )
    .load(&mut db)
    .await
    .unwrap();
    let lines: Vec<ReservationLineRow> = diesel::sql_query(
        "SELECT r.saga_id, r.state, l.product_id, l.quantity \
         FROM reservations r JOIN reservation_lines l ON l.saga_id = r.saga_id",
    )
    .load(&mut db)
    .await
    .unwrap();
    let mut broken = Vec::new();
    let mut sold: HashMap<i64, i64> = HashMap::new();
    let mut stored: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for line in &lines {
        if line.state == "CONFIRMED" {
            *sold.entry(line.product_id).or_default() += line.quantity;
        } else if line.state != "RELEASED" {
            broken.push(format!(
                "reservation {} still {} after the storm",
                line.saga_id, line.state
            ));
        }
        stored
            .entry(line.saga_id.clone())
            .or_default()
            .push((line.product_id, line.quantity));
    }
    for (saga, mut got) in stored {
        got.sort_unstable();
        match sagas.get(&saga) {
            Some((asked, _)) if *asked == got => {}
            asked => broken.push(format!(
                "reservation {saga} holds {got:?}, asked {:?}",
                asked.map(|(lines, _)| lines)
            )),
        }
    }
    for row in &rows {
        if row.available + row.reserved + row.sold != INITIAL_STOCK
            || row.reserved != 0
            || row.available < 0
            || row.sold != sold.get(&row.product_id).copied().unwrap_or_default()
        {
            broken.push(format!(
                "product {}: available {} reserved {} sold {} (confirmed lines: {:?})",
                row.product_id,
                row.available,
                row.reserved,
                row.sold,
                sold.get(&row.product_id)
            ));
        }
        if row.like_count != row.likes {
            broken.push(format!(
                "product {}: like_count {} but {} likes",
                row.product_id, row.like_count, row.likes
            ));
        }
    }
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
#[derive(Clone)]
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

fn check_template(problems: &mut Vec<String>, got: &coupon::CouponTemplate, want: &StormTemplate) {
    expect(problems, "template.id", got.id, want.id);
    expect(problems, "template.name", &got.name, &want.name);
    expect(problems, "template.value", got.value, want.value);
    expect(
        problems,
        "template.kind",
        got.kind,
        coupon::DiscountKind::Fixed as i32,
    );
    if got.issued_quantity > got.total_quantity {
        problems.push(format!(
            "issued {} > total {}",
            got.issued_quantity, got.total_quantity
        ));
    }
}

async fn coupon_task(
    mesh: &Mesh,
    templates: &[StormTemplate],
    held: &HashMap<(usize, usize), i64>,
    task: u64,
    mut state: CouponTask,
) -> (Tally, CouponTask) {
    let mut coupons = mesh.coupons();
    let mut admin = mesh.coupon_admin();
    let mut rng = Rng::new(0xC0_0000 + task);
    let mut tally = Tally::default();
    let by_id: HashMap<i64, &StormTemplate> = templates.iter().map(|t| (t.id, t)).collect();
    // This task alone uses and restores the coupons of its two users.
    let own = [
        usize::try_from(2 * task).unwrap(),
        usize::try_from(2 * task + 1).unwrap(),
    ];
    for n in 0..CALLS {
        let deadline = rng.deadline();
        tally.call(deadline);
        let roll = rng.below(100);
        if roll < 25 {
            let t = &templates[rng.index(TEMPLATES)];
            let what = format!("GetTemplate({})", t.id);
            let request = coupon::GetTemplateRequest { template_id: t.id };
            match admin.get_template(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let mut problems = Vec::new();
                    check_template(&mut problems, &answer.into_inner(), t);
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 45 {
            let i = rng.index(COUPON_USERS);
            let user = coupon_user(i);
            let what = format!("ListUserCoupons({user})");
            let request = coupon::ListUserCouponsRequest {
                user_id: user.clone(),
                page: 0,
                size: 20,
            };
            match coupons
                .list_user_coupons(with_deadline(request, deadline))
                .await
            {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    let count = i64::try_from(answer.coupons.len()).unwrap();
                    if answer.total < count || count < i64::try_from(ISSUED).unwrap() {
                        problems.push(format!("{count} coupons, total {}", answer.total));
                    }
                    for c in &answer.coupons {
                        expect(&mut problems, "coupon.user_id", c.user_id.as_str(), &user);
                        let template = c.template.clone().unwrap_or_default();
                        match by_id.get(&template.id) {
                            Some(want) => {
                                check_template(&mut problems, &template, want);
                                let k = templates.iter().position(|t| t.id == want.id).unwrap();
                                if let Some(&id) = held.get(&(i, k)) {
                                    expect(&mut problems, "coupon.id", c.id, id);
                                }
                            }
                            None => problems.push(format!("unknown template {}", template.id)),
                        }
                    }
                    tally.answer(&what, &problems);
                }
                Err(status) => tally.failed(&what, &status, &[]),
            }
        } else if roll < 60 {
            let i = rng.index(COUPON_USERS);
            let k = rng.index(ISSUED);
            let id = held[&(i, k)];
            let amount = 1_000 * rng.range(1, 50);
            let what = format!("QuoteDiscount({}, {id}, {amount})", coupon_user(i));
            let request = coupon::QuoteDiscountRequest {
                user_id: coupon_user(i),
                user_coupon_id: id,
                order_amount: amount,
            };
            match coupons
                .quote_discount(with_deadline(request, deadline))
                .await
            {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    let discount = templates[k].value.min(amount);
                    expect(&mut problems, "user_coupon_id", answer.user_coupon_id, id);
                    expect(&mut problems, "order_amount", answer.order_amount, amount);
                    expect(&mut problems, "discount", answer.discount, discount);
                    expect(&mut problems, "payable", answer.payable, amount - discount);
                    tally.answer(&what, &problems);
                }
                // Another task may hold the coupon used at this moment.
                Err(status) => tally.failed(&what, &status, &[Code::FailedPrecondition]),
            }
        } else if roll < 75 {
            let i = rng.index(COUPON_USERS);
            let k = ISSUED + rng.index(TEMPLATES - ISSUED);
            let user = coupon_user(i);
            let what = format!("IssueCoupon({}, {user})", templates[k].id);
            let request = coupon::IssueCouponRequest {
                template_id: templates[k].id,
                user_id: user.clone(),
            };
            match coupons.issue_coupon(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "user_id", answer.user_id.as_str(), &user);
                    check_template(
                        &mut problems,
                        &answer.template.clone().unwrap_or_default(),
                        &templates[k],
                    );
                    state.issued.insert(answer.id, (i, k));
                    tally.answer(&what, &problems);
                }
                // One per user per template.
                Err(status) => tally.failed(&what, &status, &[Code::AlreadyExists]),
            }
        } else {
            // Use one of this task's coupons under a new saga, then restore
            // it (in time or not: every use is restored after the storm).
            let i = own[rng.index(2)];
            let k = rng.index(ISSUED);
            let id = held[&(i, k)];
            let amount = 1_000 * rng.range(5, 50);
            let saga = saga();
            state.uses.insert(saga.clone(), (i, id));
            let what = format!("UseCoupon({saga}, {}, {id}, {amount})", coupon_user(i));
            let discount = templates[k].value.min(amount);
            let request = coupon::UseCouponRequest {
                saga_id: saga.clone(),
                user_id: coupon_user(i),
                user_coupon_id: id,
                order_amount: amount,
                expected_discount: Some(discount),
            };
            match coupons.use_coupon(with_deadline(request, deadline)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let mut problems = Vec::new();
                    expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                    expect(&mut problems, "user_coupon_id", answer.user_coupon_id, id);
                    expect(&mut problems, "discount", answer.discount, discount);
                    tally.answer(&what, &problems);
                }
                // Still used by an earlier saga whose restore was cut.
                Err(status) => tally.failed(&what, &status, &[Code::FailedPrecondition]),
            }
            // A cut restore is sent again in time, so the coupon is free
            // for the next use.
            let first = rng.deadline();
            let tries = if first < NORMAL {
                vec![first, NORMAL]
            } else {
                vec![first]
            };
            for deadline in tries {
                tally.call(deadline);
                let what = format!("RestoreCoupon({saga}) #{n}");
                let request = coupon::RestoreCouponRequest {
                    saga_id: saga.clone(),
                };
                match coupons
                    .restore_coupon(with_deadline(request, deadline))
                    .await
                {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        let mut problems = Vec::new();
                        expect(&mut problems, "saga_id", answer.saga_id.as_str(), &saga);
                        if answer.restored {
                            expect(&mut problems, "user_coupon_id", answer.user_coupon_id, id);
                        }
                        tally.answer(&what, &problems);
                        break;
                    }
                    Err(status) => tally.failed(&what, &status, &[]),
                }
            }
        }
    }
    (tally, state)
}

#[derive(diesel::QueryableByName)]
struct UserCouponRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    template_id: i64,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    state: String,
}

#[derive(diesel::QueryableByName)]
struct TemplateRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    issued_quantity: i64,
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

    let states = (0..TASKS).map(|_| CouponTask::default()).collect();
    let (mut tally, states) = storm(states, |task, state| {
        coupon_task(&mesh, &templates, &held, task, state)
    })
    .await;

    // Restore every use (a replay, or a no-op when it never applied).
    let coupons = mesh.coupons();
    let mut uses = HashMap::new();
    let mut issued = HashMap::new();
    for state in states {
        uses.extend(state.uses);
        issued.extend(state.issued);
    }
    for (saga, (_, id)) in &uses {
        let what = format!("RestoreCoupon({saga}) after the storm");
        if let Some(answer) = settle(&mut tally, &what, &[], || {
            let mut coupons = coupons.clone();
            let request = with_deadline(
                coupon::RestoreCouponRequest {
                    saga_id: saga.clone(),
                },
                NORMAL,
            );
            async move { coupons.restore_coupon(request).await }
        })
        .await
        {
            let mut problems = Vec::new();
            expect(&mut problems, "saga_id", answer.saga_id.as_str(), saga);
            if answer.restored {
                expect(&mut problems, "user_coupon_id", answer.user_coupon_id, *id);
            }
            tally.answer(&what, &problems);
        }
    }

    let mut db = mesh.database("coupon").connect().await.unwrap();
    let rows: Vec<UserCouponRow> =
        diesel::sql_query("SELECT id, template_id, user_id, state FROM user_coupons")
            .load(&mut db)
            .await
            .unwrap();
    let stored_templates: Vec<TemplateRow> =
        diesel::sql_query("SELECT id, issued_quantity FROM coupon_templates")
            .load(&mut db)
            .await
            .unwrap();
    let mut broken = Vec::new();
    let mut per_template: HashMap<i64, i64> = HashMap::new();
    for row in &rows {
        *per_template.entry(row.template_id).or_default() += 1;
        if row.state != "AVAILABLE" {
            broken.push(format!(
                "coupon {} still {} after every use was restored",
                row.id, row.state
            ));
        }
        if let Some(&(i, k)) = issued.get(&row.id)
            && (row.user_id != coupon_user(i) || row.template_id != templates[k].id)
        {
            broken.push(format!(
                "coupon {} is {}'s of template {}, answered as {}'s of {}",
                row.id,
                row.user_id,
                row.template_id,
                coupon_user(i),
                templates[k].id
            ));
        }
    }
    for t in &stored_templates {
        let count = per_template.get(&t.id).copied().unwrap_or_default();
        if t.issued_quantity != count {
            broken.push(format!(
                "template {}: issued_quantity {} but {count} coupons",
                t.id, t.issued_quantity
            ));
        }
    }
    tally.verdict("coupon", &broken, &mesh);
    mesh.shutdown().await;
}
