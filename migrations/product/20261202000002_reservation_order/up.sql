-- A reservation records the order it is for and when that order was placed,
-- so that the sales ranking can be rebuilt from the database: per order (the
-- key the ranking's per-order state uses), on the day the order was placed.
-- NULL in rows written before (and by callers that send no order): a rebuild
-- counts such a row on its `created_at` day, or skips it without an order id.
ALTER TABLE reservations
    ADD COLUMN order_id   VARCHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL AFTER state,
    ADD COLUMN ordered_at DATETIME(6) NULL AFTER order_id,
    -- The rebuild reads settled reservations (CONFIRMED, RELEASED) of the
    -- last days.
    ADD INDEX reservations_state_ordered_at (state, ordered_at);
