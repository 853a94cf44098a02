//! Seeds the shop into the saga mesh through its public gRPC APIs (so the
//! ids are the mesh's own), then the same shop, with the same ids, into the
//! baseline's database.

use std::time::{Duration, SystemTime};

use commerce_proto::coupon::v1 as coupon;
use commerce_proto::point::v1 as point;
use commerce_proto::product::v1 as product;
use futures::{StreamExt, TryStreamExt, stream};

use crate::mesh::Systems;
use crate::model::{SeededBrand, SeededCoupon, SeededProduct, SeededTemplate, SeededUser, Shop};

/// Calls in flight while seeding.
const SEED_CONCURRENCY: usize = 32;

/// How big a shop to seed.
#[derive(Debug, Clone, Copy)]
pub struct ShopSize {
    pub products: usize,
    pub stock_per_product: i64,
    pub users: usize,
    pub points_per_user: i64,
    /// Coupons to issue (spread over users, one per user per template).
    pub coupons: usize,
}

/// A deterministic price between 1,000 and 50,000 KRW.
fn price(i: usize) -> i64 {
    1_000 * (1 + (i as i64 * 7_919) % 50)
}

pub async fn seed(systems: &Systems, size: ShopSize, prefix: &str) -> anyhow::Result<Shop> {
    let brand = systems
        .product_admin()
        .create_brand(product::CreateBrandRequest {
            name: format!("{prefix} brand"),
            description: "seeded by commerce-bench".to_owned(),
        })
        .await?
        .into_inner();

    let products: Vec<SeededProduct> = stream::iter(0..size.products)
        .map(|i| {
            let mut admin = systems.product_admin();
            let name = format!("{prefix} product {i}");
            async move {
                let created = admin
                    .create_product(product::CreateProductRequest {
                        brand_id: brand.id,
                        name: name.clone(),
                        price: price(i),
                        status: product::ProductStatus::OnSale as i32,
                        stock: size.stock_per_product,
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(SeededProduct {
                    id: created.id,
                    name,
                    price: price(i),
                    stock: size.stock_per_product,
                })
            }
        })
        .buffered(SEED_CONCURRENCY)
        .try_collect()
        .await?;

    let users: Vec<SeededUser> = stream::iter(0..size.users)
        .map(|i| {
            let mut points = systems.points();
            let user_id = format!("{prefix}-user-{i}");
            async move {
                let mut remaining = size.points_per_user;
                let mut n = 0;
                while remaining > 0 {
                    // One charge is at most 10,000,000 points.
                    let amount = remaining.min(10_000_000);
                    points
                        .charge(point::ChargeRequest {
                            user_id: user_id.clone(),
                            amount,
                            idempotency_key: format!("seed-{n}"),
                        })
                        .await?;
                    remaining -= amount;
                    n += 1;
                }
                anyhow::Ok(SeededUser {
                    user_id,
                    points: size.points_per_user,
                })
            }
        })
        .buffered(SEED_CONCURRENCY)
        .try_collect()
        .await?;

    let per_template = users.len().max(1);
    let template_count = size.coupons.div_ceil(per_template);
    let now = SystemTime::now();
    let mut templates = Vec::new();
    for t in 0..template_count {
        let created = systems
            .coupon_admin()
            .create_template(coupon::CreateTemplateRequest {
                name: format!("{prefix} 1,000 off #{t}"),
                kind: coupon::DiscountKind::Fixed as i32,
                value: 1_000,
                max_discount: None,
                min_order_amount: 0,
                valid_from: Some((now - Duration::from_secs(3_600)).into()),
                valid_until: Some((now + Duration::from_secs(7 * 86_400)).into()),
                total_quantity: per_template as i64,
            })
            .await?
            .into_inner();
        templates.push(SeededTemplate {
            id: created.id,
            amount: 1_000,
            min_order_amount: 0,
            total_quantity: per_template as i64,
        });
    }
    let coupons: Vec<SeededCoupon> = stream::iter(0..size.coupons)
        .map(|c| {
            let mut coupons = systems.coupons();
            let template_id = templates[c / per_template].id;
            let user_id = users[c % per_template].user_id.clone();
            async move {
                let issued = coupons
                    .issue_coupon(coupon::IssueCouponRequest {
                        template_id,
                        user_id: user_id.clone(),
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(SeededCoupon {
                    id: issued.id,
                    template_id,
                    user_id,
                })
            }
        })
        .buffered(SEED_CONCURRENCY)
        .try_collect()
        .await?;

    Ok(Shop {
        brand: SeededBrand {
            id: brand.id,
            name: brand.name,
        },
        products,
        users,
        templates,
        coupons,
    })
}
