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

INSERT INTO order_lines (order_id, product_id, quantity, product_name, brand_id, brand_name, unit_price)
SELECT o.id, j.product_id, j.quantity, j.product_name, j.brand_id, j.brand_name, j.unit_price
FROM orders o, JSON_TABLE(o.lines_json, '$[*]' COLUMNS (
    product_id BIGINT PATH '$.product_id',
    quantity BIGINT PATH '$.quantity',
    product_name VARCHAR(200) PATH '$.product_name',
    brand_id BIGINT PATH '$.brand_id',
    brand_name VARCHAR(100) PATH '$.brand_name',
    unit_price BIGINT PATH '$.unit_price')) AS j;

ALTER TABLE orders DROP COLUMN lines_json;
