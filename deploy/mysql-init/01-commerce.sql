-- The commerce mesh's databases and service account, as deploy/setup.sh
-- creates them on a local MariaDB. Run once by the MySQL image on its first
-- start (an empty data volume); runnable by hand as any superuser.
--
-- Each server owns one database: the three services' and the order
-- orchestrator's (commerce_order). Tests create more `commerce_t<hex>_<label>`
-- databases, hence the grant on a pattern.
CREATE DATABASE IF NOT EXISTS `commerce_product` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `commerce_point`   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `commerce_coupon`  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE DATABASE IF NOT EXISTS `commerce_order`   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- Services connect from other containers, so from any host of the network;
-- localhost covers `docker compose exec mysql mysql -ucommerce -p`.
CREATE USER IF NOT EXISTS 'commerce'@'%' IDENTIFIED BY 'commerce';
CREATE USER IF NOT EXISTS 'commerce'@'localhost' IDENTIFIED BY 'commerce';
GRANT ALL PRIVILEGES ON `commerce\_%`.* TO 'commerce'@'%';
GRANT ALL PRIVILEGES ON `commerce\_%`.* TO 'commerce'@'localhost';
FLUSH PRIVILEGES;
