DROP INDEX orders_updated_at ON orders;
