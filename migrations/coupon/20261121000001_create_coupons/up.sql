-- Coupon templates: what a coupon gives, when it is valid and how many may
-- be issued first-come. `issued_quantity` is raised by a conditional UPDATE
-- in the issuing transaction; the CHECK makes over-issuance impossible even
-- for a buggy writer.
CREATE TABLE coupon_templates (
    id               BIGINT       NOT NULL AUTO_INCREMENT,
    name             VARCHAR(100) NOT NULL,
    -- FIXED: `value` KRW off. PERCENT: `value` percent off, capped by max_discount.
    kind             VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    value            BIGINT       NOT NULL,
    max_discount     BIGINT       NULL,
    min_order_amount BIGINT       NOT NULL,
    valid_from       DATETIME(6)  NOT NULL,
    valid_until      DATETIME(6)  NOT NULL,
    total_quantity   BIGINT       NOT NULL,
    issued_quantity  BIGINT       NOT NULL DEFAULT 0,
    created_at       DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT coupon_templates_discount CHECK (
        (kind = 'FIXED' AND value BETWEEN 1 AND 100000000 AND max_discount IS NULL)
        OR (kind = 'PERCENT' AND value BETWEEN 1 AND 100 AND (max_discount IS NULL OR max_discount > 0))
    ),
    CONSTRAINT coupon_templates_min_order CHECK (min_order_amount >= 0),
    CONSTRAINT coupon_templates_window CHECK (valid_until > valid_from),
    CONSTRAINT coupon_templates_quantity CHECK (total_quantity BETWEEN 1 AND 10000000),
    CONSTRAINT coupon_templates_issued CHECK (issued_quantity >= 0 AND issued_quantity <= total_quantity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Coupons issued to users: one per user per template. `used_by_saga` is the
-- saga whose use_coupon applied; restore_coupon finds the coupon by it.
CREATE TABLE user_coupons (
    id           BIGINT      NOT NULL AUTO_INCREMENT,
    template_id  BIGINT      NOT NULL,
    user_id      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    used_by_saga CHAR(36)    CHARACTER SET ascii COLLATE ascii_bin NULL,
    used_at      DATETIME(6) NULL,
    issued_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY user_coupons_template_user (template_id, user_id),
    -- ListUserCoupons: a user's coupons, newest first.
    KEY user_coupons_user (user_id, id),
    -- RestoreCoupon: the coupon a saga used.
    KEY user_coupons_used_by_saga (used_by_saga),
    CONSTRAINT user_coupons_template FOREIGN KEY (template_id) REFERENCES coupon_templates (id),
    CONSTRAINT user_coupons_state CHECK (
        (state = 'AVAILABLE' AND used_by_saga IS NULL AND used_at IS NULL)
        OR (state = 'USED' AND used_by_saga IS NOT NULL AND used_at IS NOT NULL)
    )
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
