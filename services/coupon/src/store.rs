//! Storage of templates and user coupons: the diesel schema, row models and
//! [`CouponStore`], the service's narrow interface to its database. Each
//! write is one transaction, run again when it loses a deadlock.

use chrono::NaiveDateTime;
use commerce_platform::barrier::{self, SagaPair};
use commerce_platform::db::{PreparedExt, ScopedFutureExt, is_unique_violation, last_insert_id};
use commerce_platform::paging::PageRequest;
use commerce_platform::{Database, SagaCall, ServiceError, UserId, time};
use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use crate::domain::{
    self, CouponRestore, CouponState, CouponTemplate, CouponTerms, CouponUse, Discount,
    DiscountKind, IssueRefusal, NewTemplate, OrderAmount, Quote, TEMPLATE_ENTITY,
    USER_COUPON_ENTITY, UserCoupon,
};

/// The saga action and compensation of this service. Persisted in barrier
/// rows: never rename them.
pub const USE_COUPON: SagaPair = SagaPair {
    action: "use_coupon",
    compensation: "restore_coupon",
};

pub mod schema {
    diesel::table! {
        coupon_templates (id) {
            id -> BigInt,
            name -> Varchar,
            kind -> Varchar,
            value -> BigInt,
            max_discount -> Nullable<BigInt>,
            min_order_amount -> BigInt,
            valid_from -> Datetime,
            valid_until -> Datetime,
            total_quantity -> BigInt,
            issued_quantity -> BigInt,
            created_at -> Datetime,
        }
    }

    diesel::table! {
        user_coupons (id) {
            id -> BigInt,
            template_id -> BigInt,
            user_id -> Varchar,
            state -> Varchar,
            used_by_saga -> Nullable<Char>,
            used_at -> Nullable<Datetime>,
            issued_at -> Datetime,
        }
    }

    diesel::joinable!(user_coupons -> coupon_templates (template_id));
    diesel::allow_tables_to_appear_in_same_query!(coupon_templates, user_coupons);
}

use schema::{coupon_templates, user_coupons};

/// A `coupon_templates` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = coupon_templates)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
struct TemplateRow {
    id: i64,
    name: String,
    kind: String,
    value: i64,
    max_discount: Option<i64>,
    min_order_amount: i64,
    valid_from: NaiveDateTime,
    valid_until: NaiveDateTime,
    total_quantity: i64,
    issued_quantity: i64,
    created_at: NaiveDateTime,
}

impl TemplateRow {
    /// Rebuilds the domain template; a row the CHECK constraints should have
    /// refused is an internal error, not a panic.
    fn into_domain(self) -> Result<CouponTemplate, ServiceError> {
        let kind = DiscountKind::from_stored(&self.kind).ok_or_else(|| {
            ServiceError::internal(format!("template {} has kind {:?}", self.id, self.kind))
        })?;
        let discount = Discount::parse(Some(kind), self.value, self.max_discount).map_err(|e| {
            ServiceError::internal(format!("template {} has a bad discount: {e}", self.id))
        })?;
        Ok(CouponTemplate {
            id: self.id,
            name: self.name,
            terms: CouponTerms {
                discount,
                min_order_amount: self.min_order_amount,
                valid_from: self.valid_from,
                valid_until: self.valid_until,
            },
            total_quantity: self.total_quantity,
            issued_quantity: self.issued_quantity,
            created_at: self.created_at,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = coupon_templates)]
struct NewTemplateRow<'a> {
    name: &'a str,
    kind: &'static str,
    value: i64,
    max_discount: Option<i64>,
    min_order_amount: i64,
    valid_from: NaiveDateTime,
    valid_until: NaiveDateTime,
    total_quantity: i64,
    issued_quantity: i64,
    created_at: NaiveDateTime,
}

/// A `user_coupons` row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = user_coupons)]
#[diesel(check_for_backend(diesel::mysql::Mysql))]
struct UserCouponRow {
    id: i64,
    template_id: i64,
    user_id: String,
    state: String,
    used_by_saga: Option<String>,
    used_at: Option<NaiveDateTime>,
    issued_at: NaiveDateTime,
}

impl UserCouponRow {
    fn state(&self) -> Result<CouponState, ServiceError> {
        CouponState::from_stored(&self.state).ok_or_else(|| {
            ServiceError::internal(format!(
                "user coupon {} has state {:?}",
                self.id, self.state
            ))
        })
    }

    fn into_domain(self, template: TemplateRow) -> Result<UserCoupon, ServiceError> {
        Ok(UserCoupon {
            state: self.state()?,
            id: self.id,
            user_id: self.user_id,
            used_by_saga: self.used_by_saga,
            used_at: self.used_at,
            issued_at: self.issued_at,
            template: template.into_domain()?,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = user_coupons)]
struct NewUserCouponRow<'a> {
    template_id: i64,
    user_id: &'a str,
    state: &'static str,
    issued_at: NaiveDateTime,
}

/// What a UseCoupon request asks for, validated.
#[derive(Debug, Clone)]
pub struct CouponUseRequest {
    pub user: UserId,
    pub user_coupon_id: i64,
    pub order_amount: OrderAmount,
    /// When set, the use is refused unless the discount equals it.
    pub expected_discount: Option<i64>,
}

/// What the issue gate is rebuilt from: a template's quantity and the users
/// holding one of its coupons.
#[derive(Debug, Clone)]
pub struct IssueSnapshot {
    pub total_quantity: i64,
    pub users: Vec<String>,
}

/// The coupon service's database.
#[derive(Debug, Clone)]
pub struct CouponStore {
    db: Database,
}

impl CouponStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a validated template; returns it as stored.
    pub async fn template_create(&self, new: &NewTemplate) -> Result<CouponTemplate, ServiceError> {
        let row = NewTemplateRow {
            name: &new.name,
            kind: new.terms.discount.kind().as_str(),
            value: new.terms.discount.value(),
            max_discount: new.terms.discount.max_discount(),
            min_order_amount: new.terms.min_order_amount,
            valid_from: new.terms.valid_from,
            valid_until: new.terms.valid_until,
            total_quantity: new.total_quantity,
            issued_quantity: 0,
            created_at: time::now(),
        };
        let row = &row;
        self.db
            .transaction(|c| {
                async move {
                    diesel::insert_into(coupon_templates::table)
                        .values(row)
                        .execute(c)
                        .await?;
                    let id = last_insert_id(c).await?;
                    template_load(c, id).await
                }
                .scope_boxed()
            })
            .await
    }

    pub async fn template_get(&self, template_id: i64) -> Result<CouponTemplate, ServiceError> {
        self.db
            .read(|c| template_load(c, template_id).scope_boxed())
            .await
    }

    /// The quantity of `template_id` and every user it was issued to, for the
    /// issue gate (NOT_FOUND when unknown). Two unlocked reads: an issue that
    /// commits in between is missing from `users`, which makes the gate
    /// admit more, never fewer, than MySQL would accept.
    pub async fn template_issue_snapshot(
        &self,
        template_id: i64,
    ) -> Result<IssueSnapshot, ServiceError> {
        self.db
            .read(|c| {
                async move {
                    let template = template_load(c, template_id).await?;
                    let users = user_coupons::table
                        .filter(user_coupons::template_id.eq(template_id))
                        .select(user_coupons::user_id)
                        .load(c)
                        .await?;
                    Ok(IssueSnapshot {
                        total_quantity: template.total_quantity,
                        users,
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// First-come issuance. The claim is a conditional increment of the
    /// template's counter (the row lock serialises concurrent claims, so it
    /// can never pass `total_quantity`); the user's coupon is inserted in the
    /// same transaction, and a duplicate rolls the claim back. Requests that
    /// must fail (sold out, held, expired) are refused by a plain read first,
    /// so a crowd arriving after the sell-out never queues on the row lock.
    pub async fn coupon_issue(
        &self,
        template_id: i64,
        user: &UserId,
    ) -> Result<UserCoupon, ServiceError> {
        let (template, held) = self
            .db
            .read(|c| template_for_issue(c, template_id, user).scope_boxed())
            .await?;
        if let Some(refusal) = domain::issue_refusal(&template, time::now(), held) {
            return Err(refusal.into());
        }
        self.db
            .transaction(|c| {
                async move {
                    let now = time::now();
                    let claimed = diesel::update(
                        coupon_templates::table
                            .filter(coupon_templates::id.eq(template_id))
                            .filter(
                                coupon_templates::issued_quantity
                                    .lt(coupon_templates::total_quantity),
                            )
                            .filter(coupon_templates::valid_until.gt(now)),
                    )
                    .set(
                        coupon_templates::issued_quantity.eq(coupon_templates::issued_quantity + 1),
                    )
                    .execute(c)
                    .await?;
                    if claimed == 0 {
                        // Lost the race: explain it from what won.
                        let (template, held) = template_for_issue(c, template_id, user).await?;
                        let refusal = domain::issue_refusal(&template, now, held)
                            .unwrap_or(IssueRefusal::SoldOut);
                        return Err(refusal.into());
                    }
                    let inserted = diesel::insert_into(user_coupons::table)
                        .values(NewUserCouponRow {
                            template_id,
                            user_id: user.as_str(),
                            state: CouponState::Available.as_str(),
                            issued_at: now,
                        })
                        .execute(c)
                        .await;
                    match inserted {
                        Ok(_) => {}
                        // Returning an error rolls the claim back with it.
                        Err(e) if is_unique_violation(&e) => {
                            return Err(IssueRefusal::AlreadyIssued.into());
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let id = last_insert_id(c).await?;
                    user_coupon_load(c, id).await?.ok_or_else(|| {
                        ServiceError::internal(format!("issued coupon {id} cannot be read back"))
                    })
                }
                .scope_boxed()
            })
            .await
    }

    /// A user's coupons, newest first, and how many they hold in all.
    pub async fn coupons_list(
        &self,
        user: &UserId,
        page: PageRequest,
    ) -> Result<(Vec<UserCoupon>, i64), ServiceError> {
        let (total, rows) = self
            .db
            .read(|c| {
                async move {
                    // Page first, count second: a user's coupons are never
                    // deleted, so the total can never be less than what the
                    // page shows (counting first, an issue landing in between
                    // could).
                    let rows: Vec<(UserCouponRow, TemplateRow)> = user_coupons::table
                        .inner_join(coupon_templates::table)
                        .filter(user_coupons::user_id.eq(user.as_str()))
                        .order(user_coupons::id.desc())
                        .limit(page.limit())
                        .offset(page.offset())
                        .select((UserCouponRow::as_select(), TemplateRow::as_select()))
                        .load(c)
                        .await?;
                    let total: i64 = user_coupons::table
                        .filter(user_coupons::user_id.eq(user.as_str()))
                        .count()
                        .get_result(c)
                        .await?;
                    Ok((total, rows))
                }
                .scope_boxed()
            })
            .await?;
        let coupons = rows
            .into_iter()
            .map(|(coupon, template)| coupon.into_domain(template))
            .collect::<Result<_, _>>()?;
        Ok((coupons, total))
    }

    /// The discount the user's coupon would give on `order` now. Read-only.
    pub async fn coupon_quote(
        &self,
        user: &UserId,
        user_coupon_id: i64,
        order: OrderAmount,
    ) -> Result<Quote, ServiceError> {
        let coupon = self
            .db
            .read(|c| user_coupon_load(c, user_coupon_id).scope_boxed())
            .await?
            .filter(|coupon| coupon.user_id == user.as_str())
            .ok_or_else(|| ServiceError::not_found(USER_COUPON_ENTITY, user_coupon_id))?;
        Ok(domain::quote(
            &coupon.template.terms,
            coupon.state,
            time::now(),
            order,
        )?)
    }

    /// Saga action `use_coupon`: marks the user's coupon used by `saga`, at
    /// most once per saga; a repeat replays the first result.
    pub async fn coupon_use(
        &self,
        call: &SagaCall,
        request: &CouponUseRequest,
    ) -> Result<CouponUse, ServiceError> {
        let saga = &call.saga;
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_action(
                        c,
                        call,
                        USE_COUPON.action,
                        async |c: &mut AsyncMysqlConnection| {
                            let id = request.user_coupon_id;
                            let coupon: UserCouponRow = user_coupons::table
                                .find(id)
                                .for_update()
                                .select(UserCouponRow::as_select())
                                .first(c)
                                .await
                                .optional()?
                                .filter(|row| row.user_id == request.user.as_str())
                                .ok_or_else(|| ServiceError::not_found(USER_COUPON_ENTITY, id))?;
                            let template = template_load(c, coupon.template_id).await?;
                            let quote = domain::quote(
                                &template.terms,
                                coupon.state()?,
                                time::now(),
                                request.order_amount,
                            )?;
                            domain::check_expected_discount(&quote, request.expected_discount)?;
                            diesel::update(user_coupons::table.find(id))
                                .set((
                                    user_coupons::state.eq(CouponState::Used.as_str()),
                                    user_coupons::used_by_saga.eq(Some(saga.as_str())),
                                    user_coupons::used_at.eq(Some(time::now())),
                                ))
                                .prepared()
                                .execute(c)
                                .await?;
                            Ok(CouponUse {
                                user_coupon_id: id,
                                discount: quote.discount,
                            })
                        },
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }

    /// Compensation `restore_coupon`: makes the coupon `saga` used available
    /// again, once; a no-op (that blocks a late use) when it used none.
    pub async fn coupon_restore(&self, call: &SagaCall) -> Result<CouponRestore, ServiceError> {
        let saga = &call.saga;
        self.db
            .transaction(|c| {
                async move {
                    barrier::run_compensation(
                        c,
                        call,
                        USE_COUPON,
                        || CouponRestore::NOTHING,
                        async |c: &mut AsyncMysqlConnection| {
                            let used: Option<i64> = user_coupons::table
                                .filter(user_coupons::used_by_saga.eq(saga.as_str()))
                                .select(user_coupons::id)
                                .for_update()
                                .first(c)
                                .await
                                .optional()?;
                            let Some(id) = used else {
                                return Ok(CouponRestore::NOTHING);
                            };
                            diesel::update(user_coupons::table.find(id))
                                .set((
                                    user_coupons::state.eq(CouponState::Available.as_str()),
                                    user_coupons::used_by_saga.eq(None::<&str>),
                                    user_coupons::used_at.eq(None::<NaiveDateTime>),
                                ))
                                .prepared()
                                .execute(c)
                                .await?;
                            Ok(CouponRestore {
                                restored: true,
                                user_coupon_id: Some(id),
                            })
                        },
                    )
                    .await
                }
                .scope_boxed()
            })
            .await
    }
}

async fn template_load(
    c: &mut AsyncMysqlConnection,
    id: i64,
) -> Result<CouponTemplate, ServiceError> {
    coupon_templates::table
        .find(id)
        .select(TemplateRow::as_select())
        .first(c)
        .await
        .optional()?
        .ok_or_else(|| ServiceError::not_found(TEMPLATE_ENTITY, id))?
        .into_domain()
}

async fn user_coupon_load(
    c: &mut AsyncMysqlConnection,
    id: i64,
) -> Result<Option<UserCoupon>, ServiceError> {
    let row: Option<(UserCouponRow, TemplateRow)> = user_coupons::table
        .inner_join(coupon_templates::table)
        .filter(user_coupons::id.eq(id))
        .select((UserCouponRow::as_select(), TemplateRow::as_select()))
        .first(c)
        .await
        .optional()?;
    row.map(|(coupon, template)| coupon.into_domain(template))
        .transpose()
}

/// A template (NOT_FOUND when unknown) and whether `user` holds a coupon of
/// it, in one unlocked read.
async fn template_for_issue(
    c: &mut AsyncMysqlConnection,
    template_id: i64,
    user: &UserId,
) -> Result<(CouponTemplate, bool), ServiceError> {
    let row: Option<(TemplateRow, Option<i64>)> = coupon_templates::table
        .left_join(
            user_coupons::table.on(user_coupons::template_id
                .eq(coupon_templates::id)
                .and(user_coupons::user_id.eq(user.as_str()))),
        )
        .filter(coupon_templates::id.eq(template_id))
        .select((TemplateRow::as_select(), user_coupons::id.nullable()))
        .first(c)
        .await
        .optional()?;
    let (template, held) =
        row.ok_or_else(|| ServiceError::not_found(TEMPLATE_ENTITY, template_id))?;
    Ok((template.into_domain()?, held.is_some()))
}
