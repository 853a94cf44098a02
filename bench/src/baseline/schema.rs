//! Diesel's view of the baseline tables (`migrations/bench_baseline`);
//! `orders` and `order_lines` have the orchestrator's shape (a copy: the
//! baseline shares the orchestrator's wire contract, not its storage).

diesel::table! {
    orders (id) {
        id -> Char,
        user_id -> Varchar,
        idempotency_key -> Varchar,
        request_json -> Text,
        state -> Varchar,
        user_coupon_id -> Nullable<BigInt>,
        subtotal -> BigInt,
        discount -> BigInt,
        points_paid -> BigInt,
        reason -> Varchar,
        reason_message -> Varchar,
        saga_id -> Char,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    order_lines (order_id, product_id) {
        order_id -> Char,
        product_id -> BigInt,
        quantity -> BigInt,
        product_name -> Nullable<Varchar>,
        brand_id -> Nullable<BigInt>,
        brand_name -> Nullable<Varchar>,
        unit_price -> Nullable<BigInt>,
    }
}

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
