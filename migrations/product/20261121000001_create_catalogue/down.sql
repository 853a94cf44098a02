DROP TABLE product_likes;
DROP TABLE product_stock;
DROP TABLE products;
DROP TABLE brands;
