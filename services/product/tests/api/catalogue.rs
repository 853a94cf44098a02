//! Brands, products, listing and likes.

use commerce_proto::product::v1 as pb;
use commerce_testkit::assert_status;
use tonic::Code;

use crate::support::spawn;

fn list(
    brand_id: Option<i64>,
    sort: pb::ProductSort,
    page: i32,
    size: i32,
) -> pb::ListProductsRequest {
    pb::ListProductsRequest {
        brand_id,
        sort: sort.into(),
        page,
        size,
    }
}

fn names(response: &pb::ListProductsResponse) -> Vec<&str> {
    response.products.iter().map(|p| p.name.as_str()).collect()
}

#[tokio::test]
async fn catalogue_and_admin_round_trip() {
    let app = spawn().await;
    let mut admin = app.admin.clone();
    let mut catalog = app.catalog.clone();

    let acme = app.brand("Acme").await;
    assert!(acme.id > 0);
    assert_eq!(acme.description, "about Acme");
    let fetched = catalog
        .get_brand(pb::GetBrandRequest { brand_id: acme.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, acme);

    // Only the fields that are set change.
    let renamed = admin
        .update_brand(pb::UpdateBrandRequest {
            brand_id: acme.id,
            name: Some("  Acme Co ".to_owned()),
            description: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "Acme Co");
    assert_eq!(renamed.description, "about Acme");
    let other = app.brand("Other").await;

    let boots = app.product(acme.id, "Boots", 30_000, 5).await;
    let socks = app.product(acme.id, "Socks", 5_000, 0).await;
    let hat = app.product(acme.id, "Hat", 12_000, 7).await;
    let scarf = app.product(other.id, "Scarf", 5_000, 1).await;
    assert_eq!(boots.brand_name, "Acme Co");
    assert_eq!(boots.status(), pb::ProductStatus::OnSale);
    assert_eq!(boots.like_count, 0);
    let stock = boots.stock.unwrap();
    assert_eq!(
        (
            stock.product_id,
            stock.available,
            stock.reserved,
            stock.sold
        ),
        (boots.id, 5, 0, 0)
    );
    assert_eq!(app.get_product(boots.id).await, boots);

    let updated = admin
        .update_product(pb::UpdateProductRequest {
            product_id: hat.id,
            name: None,
            price: Some(9_000),
            status: Some(pb::ProductStatus::Suspended.into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Hat");
    assert_eq!(updated.price, 9_000);
    assert_eq!(updated.status(), pb::ProductStatus::Suspended);
    assert_eq!(updated.created_at, hat.created_at);
    let unchanged = admin
        .update_product(pb::UpdateProductRequest {
            product_id: hat.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, updated);

    let stock = admin
        .set_stock(pb::SetStockRequest {
            product_id: socks.id,
            available: 11,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stock.available, stock.reserved, stock.sold), (11, 0, 0));
    assert_eq!(app.stock_of(socks.id).await, (11, 0, 0));

    // Likes order LIKES_DESC: Socks 2, Scarf 1, then the id tie-breaker.
    for (user, product) in [("u1", socks.id), ("u2", socks.id), ("u1", scarf.id)] {
        catalog
            .like_product(pb::LikeProductRequest {
                user_id: user.to_owned(),
                product_id: product,
            })
            .await
            .unwrap();
    }

    let latest = catalog
        .list_products(list(None, pb::ProductSort::Latest, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&latest), ["Scarf", "Hat", "Socks", "Boots"]);
    assert_eq!((latest.total, latest.page, latest.size), (4, 0, 10));
    assert_eq!(latest.products[0].brand_name, "Other");
    assert_eq!(latest.products[2].like_count, 2);
    assert_eq!(latest.products[2].stock.unwrap().available, 11);
    let unspecified = catalog
        .list_products(list(None, pb::ProductSort::Unspecified, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&unspecified), names(&latest));

    let cheapest = catalog
        .list_products(list(None, pb::ProductSort::PriceAsc, 0, 10))
        .await
        .unwrap()
        .into_inner();
    // Socks and Scarf cost the same: the lower id comes first.
    assert_eq!(names(&cheapest), ["Socks", "Scarf", "Hat", "Boots"]);

    let liked = catalog
        .list_products(list(None, pb::ProductSort::LikesDesc, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&liked), ["Socks", "Scarf", "Hat", "Boots"]);

    let of_acme = catalog
        .list_products(list(Some(acme.id), pb::ProductSort::PriceAsc, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&of_acme), ["Socks", "Hat", "Boots"]);
    assert_eq!(of_acme.total, 3);

    // Paging: size 2 over Acme's three products, newest first.
    let mut paged = Vec::new();
    for page in 0..3 {
        let response = catalog
            .list_products(list(Some(acme.id), pb::ProductSort::Latest, page, 2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.total, 3);
        assert_eq!(response.page, page);
        paged.extend(response.products.into_iter().map(|p| p.name));
    }
    assert_eq!(paged, ["Hat", "Socks", "Boots"]);

    let none = catalog
        .list_products(list(Some(999_999), pb::ProductSort::Latest, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(none.products.is_empty());
    assert_eq!(none.total, 0);

    // Bad paging and filters name their field.
    for (request, field) in [
        (list(None, pb::ProductSort::Latest, -1, 10), "page"),
        (list(None, pb::ProductSort::Latest, 0, 0), "size"),
        (list(None, pb::ProductSort::Latest, 0, 101), "size"),
        (list(None, pb::ProductSort::Latest, 0, -5), "size"),
        (list(Some(0), pb::ProductSort::Latest, 0, 10), "brand_id"),
        (
            pb::ListProductsRequest {
                sort: 42,
                ..list(None, pb::ProductSort::Latest, 0, 10)
            },
            "sort",
        ),
    ] {
        assert_status(
            catalog.list_products(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    let max = catalog
        .list_products(list(None, pb::ProductSort::Latest, 100_000, 100))
        .await
        .unwrap()
        .into_inner();
    assert!(max.products.is_empty());
    assert_eq!(max.total, 4);

    app.stop().await;
}

#[tokio::test]
async fn invalid_admin_and_catalogue_inputs_name_the_field_and_change_nothing() {
    let app = spawn().await;
    let mut admin = app.admin.clone();
    let mut catalog = app.catalog.clone();
    let brand = app.brand("Acme").await;
    let product = app.product(brand.id, "Boots", 30_000, 5).await;
    let before = app.row_counts().await;

    let create_brand = |name: &str, description: &str| pb::CreateBrandRequest {
        name: name.to_owned(),
        description: description.to_owned(),
    };
    for (request, field) in [
        (create_brand("", ""), "name"),
        (create_brand("   ", "x"), "name"),
        (create_brand(&"n".repeat(101), ""), "name"),
        (create_brand("ok", &"d".repeat(2001)), "description"),
        (create_brand("bad\u{7}name", ""), "name"),
    ] {
        assert_status(
            admin.create_brand(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        admin
            .update_brand(pb::UpdateBrandRequest {
                brand_id: brand.id,
                name: Some(String::new()),
                description: Some("new".to_owned()),
            })
            .await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        admin
            .update_brand(pb::UpdateBrandRequest {
                brand_id: 0,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "brand_id",
    );
    assert_status(
        admin
            .update_brand(pb::UpdateBrandRequest {
                brand_id: 424_242,
                name: Some("x".to_owned()),
                description: None,
            })
            .await,
        Code::NotFound,
        "BRAND_NOT_FOUND",
    );

    let create =
        |brand_id: i64, name: &str, price: i64, status: i32, stock: i64| pb::CreateProductRequest {
            brand_id,
            name: name.to_owned(),
            price,
            status,
            stock,
        };
    for (request, field) in [
        (create(0, "Hat", 1, 0, 1), "brand_id"),
        (create(-3, "Hat", 1, 0, 1), "brand_id"),
        (create(brand.id, "", 1, 0, 1), "name"),
        (create(brand.id, &"n".repeat(201), 1, 0, 1), "name"),
        (create(brand.id, "Hat", -1, 0, 1), "price"),
        (create(brand.id, "Hat", 1_000_000_001, 0, 1), "price"),
        (create(brand.id, "Hat", 1, 99, 1), "status"),
        (create(brand.id, "Hat", 1, 0, -1), "stock"),
        (create(brand.id, "Hat", 1, 0, 1_000_000_001), "stock"),
    ] {
        assert_status(
            admin.create_product(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        admin.create_product(create(424_242, "Hat", 1, 0, 1)).await,
        Code::NotFound,
        "BRAND_NOT_FOUND",
    );

    let update =
        |product_id: i64, price: Option<i64>, status: Option<i32>| pb::UpdateProductRequest {
            product_id,
            name: Some("Renamed".to_owned()),
            price,
            status,
        };
    for (request, field) in [
        (update(0, None, None), "product_id"),
        (update(product.id, Some(-5), None), "price"),
        (
            update(
                product.id,
                Some(1),
                Some(pb::ProductStatus::Unspecified.into()),
            ),
            "status",
        ),
        (update(product.id, Some(1), Some(7)), "status"),
    ] {
        assert_status(
            admin.update_product(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        admin.update_product(update(424_242, Some(1), None)).await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );

    for (product_id, available, field) in [(product.id, -1, "available"), (0, 1, "product_id")] {
        assert_status(
            admin
                .set_stock(pb::SetStockRequest {
                    product_id,
                    available,
                })
                .await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        admin
            .set_stock(pb::SetStockRequest {
                product_id: 424_242,
                available: 1,
            })
            .await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );

    assert_status(
        catalog
            .get_product(pb::GetProductRequest { product_id: -1 })
            .await,
        Code::InvalidArgument,
        "product_id",
    );
    assert_status(
        catalog
            .get_product(pb::GetProductRequest {
                product_id: 424_242,
            })
            .await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );
    assert_status(
        catalog.get_brand(pb::GetBrandRequest { brand_id: 0 }).await,
        Code::InvalidArgument,
        "brand_id",
    );
    assert_status(
        catalog
            .get_brand(pb::GetBrandRequest { brand_id: 424_242 })
            .await,
        Code::NotFound,
        "BRAND_NOT_FOUND",
    );

    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.get_product(product.id).await, product);
    let stored = catalog
        .get_brand(pb::GetBrandRequest { brand_id: brand.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored, brand);
    app.stop().await;
}

#[tokio::test]
async fn likes_are_idempotent_and_never_negative() {
    let app = spawn().await;
    let mut catalog = app.catalog.clone();
    let brand = app.brand("Acme").await;
    let product = app.product(brand.id, "Boots", 30_000, 5).await;
    let like = |user: &str, product_id: i64| pb::LikeProductRequest {
        user_id: user.to_owned(),
        product_id,
    };

    let unliked = catalog
        .unlike_product(like("ann", product.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unliked.liked, unliked.like_count), (false, 0));

    for _ in 0..2 {
        let liked = catalog
            .like_product(like("ann", product.id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (liked.product_id, liked.liked, liked.like_count),
            (product.id, true, 1)
        );
    }
    let liked = catalog
        .like_product(like("bob", product.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(liked.like_count, 2);
    for expected in [1, 1] {
        let unliked = catalog
            .unlike_product(like("ann", product.id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((unliked.liked, unliked.like_count), (false, expected));
    }
    assert_eq!(app.get_product(product.id).await.like_count, 1);

    let before = app.row_counts().await;
    assert_status(
        catalog.like_product(like("ann", 424_242)).await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );
    assert_status(
        catalog.unlike_product(like("ann", 424_242)).await,
        Code::NotFound,
        "PRODUCT_NOT_FOUND",
    );
    for (request, field) in [
        (like("", product.id), "user_id"),
        (like("has space", product.id), "user_id"),
        (like(&"u".repeat(65), product.id), "user_id"),
        (like("ann", 0), "product_id"),
    ] {
        assert_status(
            catalog.like_product(request.clone()).await,
            Code::InvalidArgument,
            field,
        );
        assert_status(
            catalog.unlike_product(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_eq!(app.row_counts().await, before);
    assert_eq!(app.get_product(product.id).await.like_count, 1);
    app.stop().await;
}
