ALTER TABLE reservations
    DROP INDEX reservations_state_ordered_at,
    DROP COLUMN ordered_at,
    DROP COLUMN order_id;
