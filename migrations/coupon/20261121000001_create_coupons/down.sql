DROP TABLE IF EXISTS user_coupons;
DROP TABLE IF EXISTS coupon_templates;
