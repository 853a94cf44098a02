DROP TABLE saga_log;
DROP TABLE sagas;
DROP TABLE order_lines;
DROP TABLE orders;
