-- A reservation's lines become one JSON array in its row (each element:
-- product_id, quantity, product_name, brand_id, brand_name, unit_price),
-- written with the reservation and read with it: no row per line.
ALTER TABLE reservations ADD COLUMN lines_json MEDIUMTEXT NULL AFTER state;

UPDATE reservations r SET lines_json = COALESCE((
    SELECT JSON_ARRAYAGG(JSON_OBJECT(
        'product_id', l.product_id,
        'quantity', l.quantity,
        'product_name', l.product_name,
        'brand_id', l.brand_id,
        'brand_name', l.brand_name,
        'unit_price', l.unit_price))
    FROM reservation_lines l
    WHERE l.saga_id = r.saga_id), '[]');

ALTER TABLE reservations MODIFY lines_json MEDIUMTEXT NOT NULL;

DROP TABLE reservation_lines;
