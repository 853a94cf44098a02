CREATE TABLE reservation_lines (
    saga_id      CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    product_id   BIGINT       NOT NULL,
    quantity     BIGINT       NOT NULL,
    product_name VARCHAR(200) NOT NULL,
    brand_id     BIGINT       NOT NULL,
    brand_name   VARCHAR(100) NOT NULL,
    unit_price   BIGINT       NOT NULL,
    PRIMARY KEY (saga_id, product_id),
    CONSTRAINT reservation_lines_reservation_fk FOREIGN KEY (saga_id) REFERENCES reservations (saga_id),
    CONSTRAINT reservation_lines_quantity_positive CHECK (quantity > 0),
    CONSTRAINT reservation_lines_unit_price_not_negative CHECK (unit_price >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO reservation_lines (saga_id, product_id, quantity, product_name, brand_id, brand_name, unit_price)
SELECT r.saga_id, j.product_id, j.quantity, j.product_name, j.brand_id, j.brand_name, j.unit_price
FROM reservations r, JSON_TABLE(r.lines_json, '$[*]' COLUMNS (
    product_id BIGINT PATH '$.product_id',
    quantity BIGINT PATH '$.quantity',
    product_name VARCHAR(200) PATH '$.product_name',
    brand_id BIGINT PATH '$.brand_id',
    brand_name VARCHAR(100) PATH '$.brand_name',
    unit_price BIGINT PATH '$.unit_price')) AS j;

ALTER TABLE reservations DROP COLUMN lines_json;
