//! Diesel's view of the baseline tables (`migrations/bench_baseline`);
//! `orders` and `order_lines` have the orchestrator's shape and use its
//! definitions.

pub use order_orchestrator::store::schema::{order_lines, orders};

diesel::table! {
    brands (id) {
        id -> BigInt,
        name -> Varchar,
        created_at -> Datetime,
    }
}

diesel::table! {
    products (id) {
        id -> BigInt,
        brand_id -> BigInt,
        brand_name -> Varchar,
        name -> Varchar,
        price -> BigInt,
        status -> Varchar,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    product_stock (product_id) {
        product_id -> BigInt,
        available -> BigInt,
        reserved -> BigInt,
        sold -> BigInt,
        updated_at -> Datetime,
    }
}

diesel::table! {
    point_accounts (user_id) {
        user_id -> Varchar,
        balance -> BigInt,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    point_ledger (id) {
        id -> BigInt,
        user_id -> Varchar,
        kind -> Varchar,
        amount -> BigInt,
        balance_after -> BigInt,
        reference -> Varchar,
        created_at -> Datetime,
    }
}

diesel::table! {
    coupon_templates (id) {
        id -> BigInt,
        amount -> BigInt,
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
        used_by_order -> Nullable<Char>,
        used_at -> Nullable<Datetime>,
        issued_at -> Datetime,
    }
}

diesel::joinable!(product_stock -> products (product_id));
diesel::joinable!(user_coupons -> coupon_templates (template_id));
diesel::allow_tables_to_appear_in_same_query!(products, product_stock);
diesel::allow_tables_to_appear_in_same_query!(user_coupons, coupon_templates);
