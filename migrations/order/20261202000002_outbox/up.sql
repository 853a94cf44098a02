-- The order event outbox: one row per event, inserted in the transaction
-- that changes the order's state (so no event is lost and none is published
-- for a change that rolled back). A row only points at its order: an order's
-- lines and amounts are final once it leaves PENDING, so the relay reads them
-- from `orders` when it publishes.
--
-- The relay claims rows like sagas are claimed (claimed_by / claim_until),
-- never a row while an earlier row of the same order is unpublished (events
-- of one order go out in the order they committed), publishes them to the
-- Redis stream, marks them published and purges them after a retention.
CREATE TABLE outbox (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- As `orders.id` (ascii_bin): any other collation makes the relay's
    -- join to `orders` scan every order instead of using its key.
    order_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    occurred_at DATETIME(6) NOT NULL,
    published_at DATETIME(6) NULL,
    claimed_by VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    claim_until DATETIME(6) NULL,
    UNIQUE KEY outbox_event (event_id),
    KEY outbox_pending (published_at, id),
    KEY outbox_order (order_id, published_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
