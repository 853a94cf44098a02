-- The benchmark's baseline: the whole shop in one database, so an order is
-- one local transaction (lock stock, points and coupon rows, write the
-- order, commit). The tables mirror the product, point, coupon and order
-- services' own, so both systems do comparable work per order.

CREATE TABLE brands (
    -- Ids are the saga mesh's, copied by the seeder.
    id         BIGINT       NOT NULL,
    name       VARCHAR(100) NOT NULL,
    created_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE products (
    id         BIGINT       NOT NULL,
    brand_id   BIGINT       NOT NULL,
    -- Copied from `brands`: an order's locking read of its products then
    -- needs no join with `brands`, whose one row every order would lock.
    brand_name VARCHAR(100) NOT NULL,
    name       VARCHAR(200) NOT NULL,
    -- Unit price in KRW.
    price      BIGINT       NOT NULL,
    status     VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT products_brand_fk FOREIGN KEY (brand_id) REFERENCES brands (id),
    CONSTRAINT products_price_not_negative CHECK (price >= 0),
    CONSTRAINT products_status_known CHECK (status IN ('ON_SALE', 'SUSPENDED', 'DISCONTINUED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE product_stock (
    product_id BIGINT      NOT NULL,
    available  BIGINT      NOT NULL,
    -- Kept for parity with the product service; an order here takes its
    -- units straight from `available` to `sold`, so it stays 0.
    reserved   BIGINT      NOT NULL DEFAULT 0,
    sold       BIGINT      NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (product_id),
    CONSTRAINT product_stock_product_fk FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT product_stock_available_not_negative CHECK (available >= 0),
    CONSTRAINT product_stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT product_stock_sold_not_negative CHECK (sold >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE point_accounts (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance    BIGINT      NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT point_accounts_balance_non_negative CHECK (balance >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every change of a balance: the seeded CHARGE, then one USE per paid order
-- (`reference` = the order id). The balance equals the sum of `amount`.
CREATE TABLE point_ledger (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    user_id       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind          VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount        BIGINT       NOT NULL,
    balance_after BIGINT       NOT NULL,
    reference     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY point_ledger_user_kind_reference (user_id, kind, reference),
    KEY point_ledger_user_id (user_id, id),
    KEY point_ledger_reference_kind (reference, kind),
    CONSTRAINT point_ledger_kind CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    CONSTRAINT point_ledger_amount_sign CHECK (
        (kind = 'USE' AND amount < 0) OR (kind <> 'USE' AND amount > 0)
    ),
    CONSTRAINT point_ledger_balance_after_non_negative CHECK (balance_after >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- FIXED coupons only (what the benchmark issues): `amount` KRW off.
CREATE TABLE coupon_templates (
    id               BIGINT       NOT NULL,
    amount           BIGINT       NOT NULL,
    min_order_amount BIGINT       NOT NULL,
    valid_from       DATETIME(6)  NOT NULL,
    valid_until      DATETIME(6)  NOT NULL,
    total_quantity   BIGINT       NOT NULL,
    issued_quantity  BIGINT       NOT NULL DEFAULT 0,
    created_at       DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT coupon_templates_amount CHECK (amount BETWEEN 1 AND 100000000),
    CONSTRAINT coupon_templates_min_order CHECK (min_order_amount >= 0),
    CONSTRAINT coupon_templates_window CHECK (valid_until > valid_from),
    CONSTRAINT coupon_templates_issued CHECK (issued_quantity >= 0 AND issued_quantity <= total_quantity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE user_coupons (
    id            BIGINT      NOT NULL,
    template_id   BIGINT      NOT NULL,
    user_id       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state         VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The order that used the coupon.
    used_by_order CHAR(36)    CHARACTER SET ascii COLLATE ascii_bin NULL,
    used_at       DATETIME(6) NULL,
    issued_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY user_coupons_template_user (template_id, user_id),
    KEY user_coupons_user (user_id, id),
    KEY user_coupons_used_by_order (used_by_order),
    CONSTRAINT user_coupons_template FOREIGN KEY (template_id) REFERENCES coupon_templates (id),
    CONSTRAINT user_coupons_state CHECK (
        (state = 'AVAILABLE' AND used_by_order IS NULL AND used_at IS NULL)
        OR (state = 'USED' AND used_by_order IS NOT NULL AND used_at IS NOT NULL)
    )
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Orders, with the same columns as the orchestrator's (no saga): only
-- CONFIRMED and REJECTED are ever committed, PENDING lives inside the
-- placing transaction.
CREATE TABLE orders (
    id              CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id         VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- Canonical JSON of the request: a reused key must carry the same request.
    request_json    TEXT         NOT NULL,
    state           VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_coupon_id  BIGINT       NULL,
    subtotal        BIGINT       NOT NULL DEFAULT 0,
    discount        BIGINT       NOT NULL DEFAULT 0,
    points_paid     BIGINT       NOT NULL DEFAULT 0,
    reason          VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    reason_message  VARCHAR(512) NOT NULL DEFAULT '',
    -- Always empty: the orders table has the orchestrator's shape, so both
    -- systems answer with the same wire type.
    saga_id         CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    created_at      DATETIME(6)  NOT NULL,
    updated_at      DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY orders_user_idempotency (user_id, idempotency_key),
    KEY orders_user_created (user_id, created_at),
    CONSTRAINT orders_state_known CHECK (state IN ('PENDING', 'CONFIRMED', 'REJECTED')),
    CONSTRAINT orders_amounts CHECK (subtotal >= 0 AND discount >= 0 AND points_paid >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Lines merged per product; the snapshot is NULL when the order was rejected
-- before its products were read (unknown, not on sale, short stock, coupon).
CREATE TABLE order_lines (
    order_id     CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    product_id   BIGINT       NOT NULL,
    quantity     BIGINT       NOT NULL,
    product_name VARCHAR(200) NULL,
    brand_id     BIGINT       NULL,
    brand_name   VARCHAR(100) NULL,
    unit_price   BIGINT       NULL,
    PRIMARY KEY (order_id, product_id),
    CONSTRAINT order_lines_quantity CHECK (quantity > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
