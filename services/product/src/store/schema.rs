//! Diesel's view of the product tables (see `migrations/product`).

diesel::table! {
    brands (id) {
        id -> BigInt,
        name -> Varchar,
        description -> Varchar,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    products (id) {
        id -> BigInt,
        brand_id -> BigInt,
        name -> Varchar,
        price -> BigInt,
        status -> Varchar,
        like_count -> BigInt,
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
    product_likes (user_id, product_id) {
        user_id -> Varchar,
        product_id -> BigInt,
        created_at -> Datetime,
    }
}

diesel::table! {
    reservations (saga_id) {
        saga_id -> Char,
        state -> Varchar,
        order_id -> Nullable<Varchar>,
        ordered_at -> Nullable<Datetime>,
        lines_json -> Mediumtext,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::joinable!(products -> brands (brand_id));
diesel::joinable!(product_stock -> products (product_id));
diesel::joinable!(product_likes -> products (product_id));

diesel::allow_tables_to_appear_in_same_query!(
    brands,
    products,
    product_stock,
    product_likes,
    reservations,
);
