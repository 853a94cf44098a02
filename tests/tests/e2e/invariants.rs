//! What the fault tests (the cancellation storm, the chaos run) share: a
//! seeded generator for their calls, the stored state of each participant
//! read straight from its tables, and the invariants that state keeps
//! whatever the faults were, each check written once. A check adds what it
//! finds to [`Violations`]; the test reports them all, then fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use commerce_testkit::error_reason;
use diesel::mysql::Mysql;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;
use tonic::{Request, Status};

use crate::harness::Mesh;

/// SplitMix64: a seeded, dependency-free generator, so every run sends the
/// same calls (their timing is what varies).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
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
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::try_from(self.below(u64::try_from(hi - lo + 1).unwrap())).unwrap()
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// `message` as a request whose gRPC deadline is `deadline`.
pub fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// A failure as a report shows it: code, `ErrorInfo` reason, message.
pub fn describe(status: &Status) -> String {
    format!(
        "{:?} {:?} {}",
        status.code(),
        error_reason(status),
        status.message()
    )
}

/// Appends `title` and the first `samples` lines of `list` to `report`.
pub fn write_samples(report: &mut String, title: &str, list: &[String], samples: usize) {
    if !list.is_empty() {
        let _ = write!(report, "\n  {title}: {}", list.len());
        for line in list.iter().take(samples) {
            let _ = write!(report, "\n    {line}");
        }
    }
}

/// Violations found, by kind.
#[derive(Default)]
pub struct Violations(BTreeMap<&'static str, Vec<String>>);

impl Violations {
    pub fn add(&mut self, kind: &'static str, what: String) {
        self.0.entry(kind).or_default().push(what);
    }

    pub fn count(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Appends each kind with its first `samples` violations to `report`.
    pub fn write(&self, report: &mut String, samples: usize) {
        for (kind, list) in &self.0 {
            write_samples(report, kind, list, samples);
        }
    }
}

/// The rows `sql` selects from the database of `service`.
pub async fn load<T>(mesh: &Mesh, service: &str, sql: &str) -> Vec<T>
where
    T: diesel::QueryableByName<Mysql> + Send + 'static,
{
    let mut db = mesh.database(service).connect().await.unwrap();
    diesel::sql_query(sql).load(&mut db).await.unwrap()
}

// ---------------------------------------------------------------- product

#[derive(diesel::QueryableByName)]
pub struct StockRow {
    #[diesel(sql_type = BigInt)]
    pub product_id: i64,
    #[diesel(sql_type = BigInt)]
    pub available: i64,
    #[diesel(sql_type = BigInt)]
    pub reserved: i64,
    #[diesel(sql_type = BigInt)]
    pub sold: i64,
    #[diesel(sql_type = BigInt)]
    pub like_count: i64,
    /// Rows of `product_likes`.
    #[diesel(sql_type = BigInt)]
    pub likes: i64,
}

/// The stock and like count of every product.
pub async fn stock(mesh: &Mesh) -> Vec<StockRow> {
    load(
        mesh,
        "product",
        "SELECT s.product_id, s.available, s.reserved, s.sold, p.like_count, \
         (SELECT COUNT(*) FROM product_likes l WHERE l.product_id = p.id) AS likes \
         FROM product_stock s JOIN products p ON p.id = s.product_id",
    )
    .await
}

/// Per product: available + reserved + sold = `initial`, nothing negative
/// or still reserved, sold = `sold` (units of what was confirmed), and the
/// like count is the number of likes.
pub fn check_stock(
    v: &mut Violations,
    stock: &[StockRow],
    initial: impl Fn(i64) -> i64,
    sold: &HashMap<i64, i64>,
) {
    for s in stock {
        let initial = initial(s.product_id);
        let want_sold = sold.get(&s.product_id).copied().unwrap_or_default();
        if s.available + s.reserved + s.sold != initial
            || s.available < 0
            || s.reserved != 0
            || s.sold != want_sold
        {
            v.add(
                "stock",
                format!(
                    "product {}: available {} reserved {} sold {} (initial {initial}, \
                     confirmed units {want_sold})",
                    s.product_id, s.available, s.reserved, s.sold
                ),
            );
        }
        if s.like_count != s.likes {
            v.add(
                "like count",
                format!(
                    "product {}: like_count {} but {} likes",
                    s.product_id, s.like_count, s.likes
                ),
            );
        }
    }
}

// ------------------------------------------------------------------ point

#[derive(diesel::QueryableByName)]
pub struct LedgerRow {
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = BigInt)]
    pub amount: i64,
    #[diesel(sql_type = BigInt)]
    pub balance_after: i64,
    #[diesel(sql_type = Text)]
    pub reference: String,
}

#[derive(diesel::QueryableByName)]
pub struct AccountRow {
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = BigInt)]
    pub balance: i64,
}

/// The point database: the ledger in order, and the balances.
pub struct Points {
    pub ledger: Vec<LedgerRow>,
    pub accounts: Vec<AccountRow>,
}

impl Points {
    pub async fn read(mesh: &Mesh) -> Self {
        Self {
            ledger: load(
                mesh,
                "point",
                "SELECT user_id, kind, amount, balance_after, reference FROM point_ledger \
                 ORDER BY id",
            )
            .await,
            accounts: load(mesh, "point", "SELECT user_id, balance FROM point_accounts").await,
        }
    }

    /// Every `balance_after` continues its user's chain and is never
    /// negative; every user's balance is its ledger sum, never negative,
    /// and what `want` says for the users it names.
    pub fn check(&self, v: &mut Violations, want: &HashMap<&str, i64>) {
        let mut sums: HashMap<&str, i64> = HashMap::new();
        for l in &self.ledger {
            let sum = sums.entry(l.user_id.as_str()).or_default();
            *sum += l.amount;
            if l.balance_after != *sum || l.balance_after < 0 {
                v.add(
                    "ledger chain",
                    format!(
                        "{}: entry {} {} has balance_after {}, the chain gives {sum}",
                        l.user_id, l.kind, l.reference, l.balance_after
                    ),
                );
            }
        }
        let balances: HashMap<&str, i64> = self
            .accounts
            .iter()
            .map(|a| (a.user_id.as_str(), a.balance))
            .collect();
        let users: HashSet<&str> = balances.keys().chain(want.keys()).copied().collect();
        for user in users {
            let balance = balances.get(user).copied().unwrap_or_default();
            let sum = sums.get(user).copied().unwrap_or_default();
            let want = want.get(user).copied();
            if balance != sum || balance < 0 || want.is_some_and(|w| w != balance) {
                v.add(
                    "points",
                    format!("{user}: balance {balance}, ledger sum {sum}, expected {want:?}"),
                );
            }
        }
    }
}

// ----------------------------------------------------------------- coupon

#[derive(diesel::QueryableByName)]
pub struct CouponRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub template_id: i64,
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub used_by_saga: Option<String>,
}

#[derive(diesel::QueryableByName)]
pub struct TemplateRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub issued_quantity: i64,
}

/// The coupon database: the coupons issued and the templates.
pub struct Coupons {
    pub coupons: Vec<CouponRow>,
    pub templates: Vec<TemplateRow>,
}

impl Coupons {
    pub async fn read(mesh: &Mesh) -> Self {
        Self {
            coupons: load(
                mesh,
                "coupon",
                "SELECT id, template_id, user_id, state, used_by_saga FROM user_coupons",
            )
            .await,
            templates: load(
                mesh,
                "coupon",
                "SELECT id, issued_quantity FROM coupon_templates",
            )
            .await,
        }
    }

    /// A coupon is USED, by that saga, iff exactly one saga of `kept` (coupon
    /// -> sagas whose use of it stands) carries it, else AVAILABLE; every
    /// template's issued quantity is the number of its coupons.
    pub fn check(&self, v: &mut Violations, kept: &HashMap<i64, Vec<&str>>) {
        let mut per_template: HashMap<i64, i64> = HashMap::new();
        for c in &self.coupons {
            *per_template.entry(c.template_id).or_default() += 1;
            let by = kept.get(&c.id).map(Vec::as_slice).unwrap_or_default();
            let ok = match (c.state.as_str(), by) {
                ("USED", [saga]) => c.used_by_saga.as_deref() == Some(*saga),
                ("AVAILABLE", []) => true,
                _ => false,
            };
            if !ok {
                v.add(
                    "coupons",
                    format!(
                        "coupon {} of {}: {} by {:?}, while the use of {} saga(s) stands",
                        c.id,
                        c.user_id,
                        c.state,
                        c.used_by_saga,
                        by.len()
                    ),
                );
            }
        }
        for t in &self.templates {
            let count = per_template.get(&t.id).copied().unwrap_or_default();
            if t.issued_quantity != count {
                v.add(
                    "issued quantity",
                    format!(
                        "template {}: issued_quantity {} but {count} coupons",
                        t.id, t.issued_quantity
                    ),
                );
            }
        }
    }
}
