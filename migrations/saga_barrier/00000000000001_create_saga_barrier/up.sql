-- The saga barrier: which saga operations this participant has applied.
-- Written in the same local transaction as each operation's effect; the
-- primary key makes every saga call idempotent with one insert.
CREATE TABLE saga_barrier (
    saga_id       CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- Persisted operation name ("reserve_stock", "release_stock", ...).
    operation     VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- APPLIED: effect committed with this row. BLOCKED: a compensation came
    -- first, so the action must never apply.
    state         VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- First result, replayed to repeated calls.
    response_json MEDIUMTEXT   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    created_at    DATETIME(6)  NOT NULL,
    PRIMARY KEY (saga_id, operation),
    KEY saga_barrier_created_at (created_at)
) ENGINE = InnoDB;
