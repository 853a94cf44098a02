-- Reconciliation reads the orders settled within a window, oldest change
-- first: without this it would scan the table.
CREATE INDEX orders_updated_at ON orders (updated_at);
