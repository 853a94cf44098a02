-- Stock reservations of order sagas, keyed by saga id, with the catalogue
-- snapshot each line was reserved at.

CREATE TABLE reservations (
    saga_id    CHAR(36)    CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state      VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (saga_id),
    CONSTRAINT reservations_state_known CHECK (state IN ('RESERVED', 'CONFIRMED', 'RELEASED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- No foreign key to `products`: its check would share-lock the product rows
-- during a reservation, and a snapshot is history that needs no live product.
CREATE TABLE reservation_lines (
    saga_id      CHAR(36)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    product_id   BIGINT       NOT NULL,
    -- Merged quantity of every request line naming the product.
    quantity     BIGINT       NOT NULL,
    product_name VARCHAR(200) NOT NULL,
    brand_id     BIGINT       NOT NULL,
    brand_name   VARCHAR(100) NOT NULL,
    -- Unit price in KRW at reservation time.
    unit_price   BIGINT       NOT NULL,
    PRIMARY KEY (saga_id, product_id),
    CONSTRAINT reservation_lines_reservation_fk FOREIGN KEY (saga_id) REFERENCES reservations (saga_id),
    CONSTRAINT reservation_lines_quantity_positive CHECK (quantity > 0),
    CONSTRAINT reservation_lines_unit_price_not_negative CHECK (unit_price >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
