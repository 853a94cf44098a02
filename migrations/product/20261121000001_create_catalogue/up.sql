-- The catalogue: brands, products, their stock and shoppers' likes.

CREATE TABLE brands (
    id          BIGINT        NOT NULL AUTO_INCREMENT,
    name        VARCHAR(100)  NOT NULL,
    description VARCHAR(2000) NOT NULL DEFAULT '',
    created_at  DATETIME(6)   NOT NULL,
    updated_at  DATETIME(6)   NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE products (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    brand_id   BIGINT       NOT NULL,
    name       VARCHAR(200) NOT NULL,
    -- Unit price in KRW.
    price      BIGINT       NOT NULL,
    status     VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- Denormalised count of `product_likes` rows, kept in the same transaction.
    like_count BIGINT       NOT NULL DEFAULT 0,
    created_at DATETIME(6)  NOT NULL,
    updated_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT products_brand_fk FOREIGN KEY (brand_id) REFERENCES brands (id),
    CONSTRAINT products_price_not_negative CHECK (price >= 0),
    CONSTRAINT products_like_count_not_negative CHECK (like_count >= 0),
    CONSTRAINT products_status_known CHECK (status IN ('ON_SALE', 'SUSPENDED', 'DISCONTINUED')),
    -- One index per list sort, unfiltered and by brand; `id` breaks ties.
    KEY products_latest (created_at, id),
    KEY products_price (price, id),
    KEY products_likes (like_count, id),
    KEY products_brand_latest (brand_id, created_at, id),
    KEY products_brand_price (brand_id, price, id),
    KEY products_brand_likes (brand_id, like_count, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Stock lives apart from `products` so that the row locks taken by
-- reservations never block catalogue edits or likes.
CREATE TABLE product_stock (
    product_id BIGINT      NOT NULL,
    -- Units that can still be reserved.
    available  BIGINT      NOT NULL,
    -- Units held by reservations neither confirmed nor released.
    reserved   BIGINT      NOT NULL DEFAULT 0,
    -- Units of confirmed reservations.
    sold       BIGINT      NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (product_id),
    CONSTRAINT product_stock_product_fk FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT product_stock_available_not_negative CHECK (available >= 0),
    CONSTRAINT product_stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT product_stock_sold_not_negative CHECK (sold >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per (user, product) like: the key makes liking idempotent.
CREATE TABLE product_likes (
    user_id    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    product_id BIGINT      NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, product_id),
    KEY product_likes_product (product_id),
    CONSTRAINT product_likes_product_fk FOREIGN KEY (product_id) REFERENCES products (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
