-- Orders as the shop sees them.
CREATE TABLE orders (
    id                CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id           VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key   VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- Canonical JSON of the request: a reused key must carry the same request.
    request_json      TEXT         NOT NULL,
    state             VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_coupon_id    BIGINT       NULL,
    subtotal          BIGINT       NOT NULL DEFAULT 0,
    discount          BIGINT       NOT NULL DEFAULT 0,
    points_paid       BIGINT       NOT NULL DEFAULT 0,
    reason            VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    reason_message    VARCHAR(512) NOT NULL DEFAULT '',
    -- The saga that placed the order.
    saga_id           CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at        DATETIME(6)  NOT NULL,
    updated_at        DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY orders_user_idempotency (user_id, idempotency_key),
    KEY orders_user_created (user_id, created_at),
    CONSTRAINT orders_amounts CHECK (subtotal >= 0 AND discount >= 0 AND points_paid >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Lines as requested; the snapshot columns are filled once stock is reserved.
CREATE TABLE order_lines (
    order_id      CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    product_id    BIGINT       NOT NULL,
    quantity      BIGINT       NOT NULL,
    product_name  VARCHAR(200) NULL,
    brand_id      BIGINT       NULL,
    brand_name    VARCHAR(100) NULL,
    unit_price    BIGINT       NULL,
    PRIMARY KEY (order_id, product_id),
    CONSTRAINT order_lines_quantity CHECK (quantity > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per saga: where it stands and who drives it. Derived from the step
-- log, kept for listing and for claiming under a lease.
CREATE TABLE sagas (
    id                CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind              VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    order_id          CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state             VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- Inputs of the saga (JSON), fixed at creation.
    params_json       TEXT         NOT NULL,
    current_step      INT          NOT NULL DEFAULT 0,
    attempts          INT          NOT NULL DEFAULT 0,
    reason            VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    next_attempt_at   DATETIME(6)  NOT NULL,
    -- The lease: the instance driving the saga and until when. `fence` grows
    -- at every claim; every write is conditioned on it.
    lease_owner       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NULL,
    lease_expires_at  DATETIME(6)  NULL,
    fence             BIGINT       NOT NULL DEFAULT 0,
    created_at        DATETIME(6)  NOT NULL,
    updated_at        DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    KEY sagas_claimable (state, next_attempt_at),
    KEY sagas_state_created (state, created_at),
    KEY sagas_order (order_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The append-only step log: the source of truth for recovery. The unique key
-- makes a retried write harmless.
CREATE TABLE saga_log (
    seq            BIGINT       NOT NULL AUTO_INCREMENT,
    saga_id        CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    step           INT          NOT NULL,
    step_name      VARCHAR(32)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    direction      VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    attempt        INT          NOT NULL,
    outcome        VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    response_json  TEXT         NULL,
    error          VARCHAR(1024) NULL,
    created_at     DATETIME(6)  NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY saga_log_event (saga_id, step, direction, attempt, outcome)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
