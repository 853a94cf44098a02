-- One account per user, created on first use. The balance is a cache of the
-- ledger's sum, kept in the same transaction as every ledger entry.
CREATE TABLE point_accounts (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    balance    BIGINT      NOT NULL DEFAULT 0,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id),
    CONSTRAINT point_accounts_balance_non_negative CHECK (balance >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every change of a balance, append-only. `amount` is signed: positive for
-- CHARGE and REFUND, negative for USE.
CREATE TABLE point_ledger (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    user_id       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind          VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    amount        BIGINT       NOT NULL,
    balance_after BIGINT       NOT NULL,
    -- The charge's idempotency key, or the saga id of a USE / REFUND.
    reference     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    -- A charge key, or a saga's USE / REFUND, exists once per user.
    UNIQUE KEY point_ledger_user_kind_reference (user_id, kind, reference),
    -- Listing a user's ledger, newest first.
    KEY point_ledger_user_id (user_id, id),
    -- Finding a saga's USE entry when refunding it.
    KEY point_ledger_reference_kind (reference, kind),
    CONSTRAINT point_ledger_kind CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    CONSTRAINT point_ledger_amount_sign CHECK (
        (kind = 'USE' AND amount < 0) OR (kind <> 'USE' AND amount > 0)
    ),
    CONSTRAINT point_ledger_balance_after_non_negative CHECK (balance_after >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
