//! The BFF through real HTTP against the real mesh: every route's happy
//! path (the shop seeded through the operator routes), the problem for each
//! status of the mapping table, a shopper reaching for another user's order
//! and coupon, bad tokens, and idempotent placing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::bff::{Bff, http};
use crate::harness::{Mesh, node};
use crate::shop;

/// One call: the status, the headers and the JSON body (problem or not).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn problem(&self, status: u16, reason: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{:#}", self.body);
        assert_eq!(self.body["reason"], reason, "{:#}", self.body);
        &self.body
    }

    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        &self.body
    }
}

async fn call(
    bff: &Bff,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = http().request(method, bff.at(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the BFF answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(bff: &Bff, path: &str, token: Option<&str>) -> Answer {
    call(bff, Method::GET, path, token, &[], None).await
}

async fn post(bff: &Bff, path: &str, token: &str, key: Option<&str>, body: Value) -> Answer {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    call(bff, Method::POST, path, Some(token), &headers, Some(body)).await
}

fn ts(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs)).to_rfc3339()
}

/// Seeds a brand, two products and a coupon template through the operator
/// routes; returns (brand, [product], template).
async fn seed(bff: &Bff, ops: &str) -> (i64, [i64; 2], i64) {
    let brand = post(
        bff,
        "/api/v1/admin/brands",
        ops,
        None,
        json!({"name": "Lumen", "description": "Lamps"}),
    )
    .await;
    let brand = brand.ok(201)["id"].as_i64().unwrap();
    let mut products = [0; 2];
    for (i, (name, price, stock)) in [("Desk Lamp", 12_000, 10), ("Floor Lamp", 30_000, 5)]
        .into_iter()
        .enumerate()
    {
        let created = post(
            bff,
            "/api/v1/admin/products",
            ops,
            None,
            json!({"brandId": brand, "name": name, "price": price, "status": "on_sale", "stock": stock}),
        )
        .await;
        let created = created.ok(201);
        assert_eq!(created["brandName"], "Lumen");
        assert_eq!(created["stock"]["available"], stock);
        products[i] = created["id"].as_i64().unwrap();
    }
    let template = post(
        bff,
        "/api/v1/admin/coupon-templates",
        ops,
        None,
        json!({"name": "2,000 off", "kind": "fixed", "value": 2000, "minOrderAmount": 10000,
               "validFrom": ts(-3600), "validUntil": ts(30 * 86_400), "totalQuantity": 10}),
    )
    .await;
    let template = template.ok(201)["id"].as_i64().unwrap();
    (brand, products, template)
}

#[tokio::test]
async fn every_route_answers_over_http_as_the_token_user() {
    let mesh = Mesh::start(1).await;
    let bff = Bff::start(&mesh).await;
    let ops = bff.operator_token();
    let ann = bff.token("ann");
    let (brand, [desk, floor], template) = seed(&bff, &ops).await;

    // Operator changes to the catalogue.
    let patched = call(
        &bff,
        Method::PATCH,
        &format!("/api/v1/admin/brands/{brand}"),
        Some(&ops),
        &[],
        Some(json!({"description": "Lamps and light"})),
    )
    .await;
    assert_eq!(patched.ok(200)["description"], "Lamps and light");
    let patched = call(
        &bff,
        Method::PATCH,
        &format!("/api/v1/admin/products/{floor}"),
        Some(&ops),
        &[],
        Some(json!({"price": 31_000})),
    )
    .await;
    assert_eq!(patched.ok(200)["price"], 31_000);
    let stock = call(
        &bff,
        Method::PUT,
        &format!("/api/v1/admin/products/{floor}/stock"),
        Some(&ops),
        &[],
        Some(json!({"available": 6})),
    )
    .await;
    assert_eq!(stock.ok(200)["available"], 6);
    let got = get(
        &bff,
        &format!("/api/v1/admin/coupon-templates/{template}"),
        Some(&ops),
    )
    .await;
    assert_eq!(got.ok(200)["kind"], "fixed");

    // The public catalogue: no token needed.
    let listed = get(
        &bff,
        &format!("/api/v1/products?brandId={brand}&sort=price_asc&page=0&size=1"),
        None,
    )
    .await;
    let listed = listed.ok(200);
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], desk, "cheapest first");
    let second = get(
        &bff,
        &format!("/api/v1/products?brandId={brand}&sort=price_asc&page=1&size=1"),
        None,
    )
    .await;
    assert_eq!(second.ok(200)["items"][0]["id"], floor);
    let product = get(&bff, &format!("/api/v1/products/{desk}"), None).await;
    assert_eq!(product.ok(200)["status"], "on_sale");
    let got = get(&bff, &format!("/api/v1/brands/{brand}"), None).await;
    assert_eq!(got.ok(200)["name"], "Lumen");

    // Likes: as the token's user, twice is once.
    for _ in 0..2 {
        let liked = call(
            &bff,
            Method::PUT,
            &format!("/api/v1/products/{desk}/like"),
            Some(&ann),
            &[],
            None,
        )
        .await;
        assert_eq!(liked.ok(200)["likeCount"], 1);
    }
    let liked = get(
        &bff,
        &format!("/api/v1/products?brandId={brand}&sort=likes_desc"),
        None,
    )
    .await;
    assert_eq!(liked.ok(200)["items"][0]["id"], desk);
    let unliked = call(
        &bff,
        Method::DELETE,
        &format!("/api/v1/products/{desk}/like"),
        Some(&ann),
        &[],
        None,
    )
    .await;
    assert_eq!(unliked.ok(200)["liked"], false);

    // Points: a charge under one key counts once.
    for _ in 0..2 {
        let charged = post(
            &bff,
            "/api/v1/me/points/charges",
            &ann,
            Some("charge-1"),
            json!({"amount": 50_000}),
        )
        .await;
        assert_eq!(charged.ok(201)["balance"], 50_000);
    }
    assert_eq!(
        get(&bff, "/api/v1/me/points", Some(&ann)).await.ok(200)["balance"],
        50_000
    );
    let ledger = get(&bff, "/api/v1/me/points/ledger", Some(&ann)).await;
    let ledger = ledger.ok(200);
    assert_eq!(ledger["total"], 1);
    assert_eq!(ledger["items"][0]["kind"], "charge");

    // Coupons: issued to the token's user.
    let coupon = post(
        &bff,
        "/api/v1/me/coupons",
        &ann,
        None,
        json!({"templateId": template}),
    )
    .await;
    let coupon = coupon.ok(201)["id"].as_i64().unwrap();
    let mine = get(&bff, "/api/v1/me/coupons", Some(&ann)).await;
    assert_eq!(mine.ok(200)["items"][0]["state"], "available");

    // An order with the coupon: 201, Location, confirmed.
    let placed = post(
        &bff,
        "/api/v1/orders",
        &ann,
        Some("order-1"),
        json!({"lines": [{"productId": desk, "quantity": 2}], "userCouponId": coupon}),
    )
    .await;
    let order = placed.ok(201).clone();
    assert_eq!(order["state"], "confirmed", "{order:#}");
    assert_eq!(order["discount"], 2000);
    assert_eq!(order["pointsPaid"], 22_000);
    let id = order["orderId"].as_str().unwrap().to_owned();
    assert_eq!(
        placed.headers["location"],
        format!("/api/v1/orders/{id}").as_str()
    );
    assert_eq!(
        get(&bff, &format!("/api/v1/orders/{id}"), Some(&ann))
            .await
            .ok(200)["orderId"],
        id.as_str()
    );
    let mine = get(&bff, "/api/v1/orders?size=5", Some(&ann)).await;
    assert_eq!(mine.ok(200)["total"], 1);
    assert_eq!(
        get(&bff, "/api/v1/me/points", Some(&ann)).await.ok(200)["balance"],
        28_000
    );

    // A refused order is an answer, not an error: the floor lamp costs more
    // than ann has left.
    let refused = post(
        &bff,
        "/api/v1/orders",
        &ann,
        Some("order-2"),
        json!({"lines": [{"productId": floor, "quantity": 1}]}),
    )
    .await;
    let refused = refused.ok(201);
    assert_eq!(refused["state"], "rejected", "{refused:#}");
    assert_eq!(refused["reason"], "POINT_INSUFFICIENT");

    // Popular products: the confirmed order's units, once the ranking
    // consumer has read the event.
    let popular = shop::eventually(&mesh, "the desk lamp ranked", || async {
        let answer = get(&bff, "/api/v1/products/popular?window=day&limit=5", None).await;
        let body = answer.ok(200).clone();
        (body["items"][0]["product"]["id"] == desk).then_some(body)
    })
    .await;
    assert_eq!(popular["items"][0]["unitsSold"], 2);
    let rebuilt = post(
        &bff,
        "/api/v1/admin/ranking/rebuild",
        &ops,
        None,
        json!({"days": 1}),
    )
    .await;
    assert_eq!(rebuilt.ok(200)["ordersCounted"], 1);

    // Operators: sagas, their log, the outbox, any order, shipping.
    let counts = get(&bff, "/api/v1/admin/sagas/counts", Some(&ops)).await;
    let counts = counts.ok(200);
    assert_eq!(counts["completed"], 1);
    assert_eq!(counts["compensated"], 1);
    let sagas = get(&bff, "/api/v1/admin/sagas?state=completed", Some(&ops)).await;
    let saga_id = sagas.ok(200)["items"][0]["sagaId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(saga_id, order["sagaId"].as_str().unwrap());
    let detail = get(&bff, &format!("/api/v1/admin/sagas/{saga_id}"), Some(&ops)).await;
    let detail = detail.ok(200);
    assert_eq!(detail["saga"]["state"], "completed");
    assert!(
        detail["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["stepName"] == "reserve_stock"
                && e["outcome"] == "succeeded"
                && e["response"].is_object()),
        "{detail:#}"
    );
    let unfinished = get(&bff, "/api/v1/admin/sagas?minAgeSeconds=0", Some(&ops)).await;
    assert_eq!(unfinished.ok(200)["items"], json!([]));
    let outbox = get(&bff, "/api/v1/admin/outbox", Some(&ops)).await;
    assert!(
        outbox.ok(200)["stream"]
            .as_str()
            .unwrap()
            .ends_with("events:orders")
    );
    let any = get(&bff, &format!("/api/v1/admin/orders/{id}"), Some(&ops)).await;
    assert_eq!(any.ok(200)["orderId"], id.as_str());

    // Cancel (a second saga), then the operator ships another order.
    let cancelled = post(
        &bff,
        &format!("/api/v1/orders/{id}/cancel"),
        &ann,
        None,
        json!({}),
    )
    .await;
    assert!(
        matches!(cancelled.status.as_u16(), 200 | 202),
        "{:#}",
        cancelled.body
    );
    let cancelled = shop::eventually(&mesh, "the order cancelled", || async {
        let answer = get(&bff, &format!("/api/v1/orders/{id}"), Some(&ann)).await;
        (answer.ok(200)["state"] == "cancelled").then_some(())
    })
    .await;
    let () = cancelled;
    assert_eq!(
        get(&bff, "/api/v1/me/points", Some(&ann)).await.ok(200)["balance"],
        50_000
    );
    let again = post(
        &bff,
        "/api/v1/orders",
        &ann,
        Some("order-3"),
        json!({"lines": [{"productId": desk, "quantity": 1}]}),
    )
    .await;
    let again = again.ok(201)["orderId"].as_str().unwrap().to_owned();
    let shipped = post(
        &bff,
        &format!("/api/v1/admin/orders/{again}/ship"),
        &ops,
        None,
        json!({}),
    )
    .await;
    assert_eq!(shipped.ok(200)["state"], "shipped");
    let delivered = post(
        &bff,
        &format!("/api/v1/admin/orders/{again}/deliver"),
        &ops,
        None,
        json!({}),
    )
    .await;
    assert_eq!(delivered.ok(200)["state"], "delivered");

    bff.stop().await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_shopper_reaches_only_their_own_orders_coupons_and_keys() {
    let mesh = Mesh::start(1).await;
    let bff = Bff::start(&mesh).await;
    let ops = bff.operator_token();
    let (ann, bob) = (bff.token("ann"), bff.token("bob"));
    let (_, [desk, _], template) = seed(&bff, &ops).await;
    for token in [&ann, &bob] {
        post(
            &bff,
            "/api/v1/me/points/charges",
            token,
            Some("seed"),
            json!({"amount": 100_000}),
        )
        .await
        .ok(201);
    }
    let bobs_coupon = post(
        &bff,
        "/api/v1/me/coupons",
        &bob,
        None,
        json!({"templateId": template}),
    )
    .await;
    let bobs_coupon = bobs_coupon.ok(201)["id"].as_i64().unwrap();
    let body = json!({"lines": [{"productId": desk, "quantity": 1}]});

    // The same key twice: one order, stock taken once.
    let first = post(&bff, "/api/v1/orders", &ann, Some("ann-1"), body.clone()).await;
    let first = first.ok(201).clone();
    let repeat = post(&bff, "/api/v1/orders", &ann, Some("ann-1"), body.clone()).await;
    assert_eq!(repeat.ok(201)["orderId"], first["orderId"]);
    assert_eq!(shop::stock(&mesh, desk).await.available, 9);
    // The same key with another body is refused, naming the reason.
    let other = json!({"lines": [{"productId": desk, "quantity": 3}]});
    post(&bff, "/api/v1/orders", &ann, Some("ann-1"), other)
        .await
        .problem(409, "IDEMPOTENCY_KEY_REUSED");
    // Keys are per user: bob's "ann-1" is his own order.
    let bobs = post(&bff, "/api/v1/orders", &bob, Some("ann-1"), body.clone()).await;
    assert_ne!(bobs.ok(201)["orderId"], first["orderId"]);

    // Bob cannot see or cancel ann's order: the same 404 as an unknown id.
    let id = first["orderId"].as_str().unwrap();
    get(&bff, &format!("/api/v1/orders/{id}"), Some(&bob))
        .await
        .problem(404, "ORDER_NOT_FOUND");
    post(
        &bff,
        &format!("/api/v1/orders/{id}/cancel"),
        &bob,
        None,
        json!({}),
    )
    .await
    .problem(404, "ORDER_NOT_FOUND");
    let unknown = uuid::Uuid::new_v4();
    get(&bff, &format!("/api/v1/orders/{unknown}"), Some(&bob))
        .await
        .problem(404, "ORDER_NOT_FOUND");
    assert_eq!(
        get(&bff, "/api/v1/orders", Some(&bob)).await.ok(200)["total"],
        1
    );
    // Ann cannot spend bob's coupon: the order is refused and the coupon
    // stays his.
    let stolen = post(
        &bff,
        "/api/v1/orders",
        &ann,
        Some("ann-2"),
        json!({"lines": [{"productId": desk, "quantity": 1}], "userCouponId": bobs_coupon}),
    )
    .await;
    let stolen = stolen.ok(201);
    assert_eq!(stolen["state"], "rejected", "{stolen:#}");
    let bobs = get(&bff, "/api/v1/me/coupons", Some(&bob)).await;
    assert_eq!(bobs.ok(200)["items"][0]["state"], "available");
    assert_eq!(
        get(&bff, "/api/v1/me/coupons", Some(&ann)).await.ok(200)["total"],
        0
    );
    // A user id in the body is not a field of any route.
    let smuggled = post(
        &bff,
        "/api/v1/me/points/charges",
        &ann,
        Some("k"),
        json!({"amount": 1, "userId": "bob"}),
    )
    .await;
    assert_eq!(
        smuggled.problem(400, "INVALID_FIELD")["detail"]
            .as_str()
            .map(|d| d.contains("userId")),
        Some(true)
    );
    assert_eq!(
        get(&bff, "/api/v1/me/points", Some(&bob)).await.ok(200)["balance"],
        88_000
    );

    bff.stop().await;
    mesh.shutdown().await;
}

#[tokio::test]
async fn every_error_is_a_problem_with_its_status() {
    let mut mesh = Mesh::start(1).await;
    // A second point server on the same database that allows the BFF one
    // call a second, for the 429.
    let mut strict_point = node(
        "point",
        &mesh.database("point").url,
        &mesh.redis_prefix,
        vec!["--rate-limit".to_owned(), "bff=1/1".to_owned()],
        &mesh.log_dir,
        "point-strict",
    );
    strict_point.start().await;
    // A listener that takes connections and never answers, for the 504.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });

    let bff = Bff::start(&mesh).await;
    let strict = Bff::start_at(
        &mesh,
        Some(&strict_point.endpoint()),
        Some(&silent_addr),
        Duration::from_secs(2),
    )
    .await;
    let ops = bff.operator_token();
    let ann = bff.token("ann");
    let (_, [desk, _], template) = seed(&bff, &ops).await;

    // 401: no token, not a bearer, forged, expired, another audience.
    get(&bff, "/api/v1/me/points", None)
        .await
        .problem(401, "TOKEN_MISSING");
    let basic = call(
        &bff,
        Method::GET,
        "/api/v1/me/points",
        None,
        &[("Authorization", "Basic YTpi")],
        None,
    )
    .await;
    basic.problem(401, "TOKEN_INVALID");
    assert!(
        basic.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let forged =
        commerce_bff::auth::Authenticator::new(&[9; 32], crate::bff::ISSUER, crate::bff::AUDIENCE)
            .unwrap()
            .mint("ann", Some("operator"), Duration::from_secs(60))
            .unwrap();
    get(&bff, "/api/v1/me/points", Some(&forged))
        .await
        .problem(401, "TOKEN_INVALID");
    get(&bff, "/api/v1/me/points", Some("not.a.jwt"))
        .await
        .problem(401, "TOKEN_INVALID");
    // Expired (past the 30 s leeway for clock skew) and for another audience.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64, aud: &str| commerce_bff::auth::Claims {
        sub: "ann".to_owned(),
        iat: now - 3600,
        exp,
        iss: crate::bff::ISSUER.to_owned(),
        aud: aud.to_owned(),
        role: Default::default(),
    };
    let expired = bff
        .auth
        .sign(&claims(now - 120, crate::bff::AUDIENCE))
        .unwrap();
    get(&bff, "/api/v1/me/points", Some(&expired))
        .await
        .problem(401, "TOKEN_INVALID");
    let elsewhere = bff.auth.sign(&claims(now + 600, "another-app")).unwrap();
    get(&bff, "/api/v1/me/points", Some(&elsewhere))
        .await
        .problem(401, "TOKEN_INVALID");
    let fine = bff
        .auth
        .sign(&claims(now + 600, crate::bff::AUDIENCE))
        .unwrap();
    get(&bff, "/api/v1/me/points", Some(&fine)).await.ok(200);
    // 403: a shopper on an operator route.
    get(&bff, "/api/v1/admin/sagas/counts", Some(&ann))
        .await
        .problem(403, "ROLE_REQUIRED");

    // 400: each names its field, header or parameter.
    let missing_key = post(
        &bff,
        "/api/v1/orders",
        &ann,
        None,
        json!({"lines": [{"productId": desk, "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        missing_key.problem(400, "IDEMPOTENCY_KEY_MISSING")["field"],
        "Idempotency-Key"
    );
    let cases = [
        (json!({"lines": []}), "lines"),
        (
            json!({"lines": [{"productId": desk, "quantity": 0}]}),
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"productId": -1, "quantity": 1}]}),
            "lines[0].productId",
        ),
        (
            json!({"lines": [{"productId": desk, "quantity": "two"}]}),
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"productId": desk, "quantity": 1}], "userCouponId": 0}),
            "userCouponId",
        ),
    ];
    for (body, field) in cases {
        let answer = post(&bff, "/api/v1/orders", &ann, Some("bad"), body).await;
        assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], field);
    }
    let answer = post(
        &bff,
        "/api/v1/me/points/charges",
        &ann,
        Some("big"),
        json!({"amount": 10_000_001}),
    )
    .await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "amount");
    let answer = get(&bff, "/api/v1/products?size=101", None).await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "size");
    let answer = get(&bff, "/api/v1/products?sort=cheapest", None).await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "sort");
    let answer = get(&bff, "/api/v1/products/abc", None).await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "productId");
    let answer = get(&bff, "/api/v1/orders/not-a-uuid", Some(&ann)).await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "orderId");
    // The mesh's own validation comes back with the JSON field name.
    let answer = post(
        &bff,
        "/api/v1/admin/brands",
        &ops,
        None,
        json!({"name": "   "}),
    )
    .await;
    assert_eq!(answer.problem(400, "INVALID_FIELD")["field"], "name");
    // 404, 409.
    get(&bff, "/api/v1/products/999999", None)
        .await
        .problem(404, "PRODUCT_NOT_FOUND");
    get(&bff, "/api/v1/no/such/route", None)
        .await
        .problem(404, "ROUTE_NOT_FOUND");
    post(
        &bff,
        "/api/v1/me/coupons",
        &ann,
        None,
        json!({"templateId": template}),
    )
    .await
    .ok(201);
    post(
        &bff,
        "/api/v1/me/coupons",
        &ann,
        None,
        json!({"templateId": template}),
    )
    .await
    .problem(409, "COUPON_ALREADY_ISSUED");
    // 413 and 415.
    let huge =
        json!({"lines": [{"productId": desk, "quantity": 1}], "pad": "x".repeat(100 * 1024)});
    post(&bff, "/api/v1/orders", &ann, Some("huge"), huge)
        .await
        .problem(413, "BODY_TOO_LARGE");
    let text = http()
        .post(bff.at("/api/v1/me/coupons"))
        .bearer_auth(&ann)
        .body("templateId=1")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // 429 with Retry-After: the strict point server's bucket holds one call.
    let mut limited = None;
    for _ in 0..20 {
        let answer = get(&strict, "/api/v1/me/points", Some(&strict.token("ann"))).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
        answer.ok(200);
    }
    let limited = limited.expect("a 429 within 20 calls at one call a second");
    limited.problem(429, "RATE_LIMITED");
    assert!(
        limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // 429 from the BFF itself: each user has a bucket of their own.
    let per_user = Bff::start_limited(&mesh, "1/2").await;
    let (ann_here, bob_here) = (per_user.token("ann"), per_user.token("bob"));
    for _ in 0..2 {
        get(&per_user, "/api/v1/me/points", Some(&ann_here))
            .await
            .ok(200);
    }
    let over = get(&per_user, "/api/v1/me/points", Some(&ann_here)).await;
    over.problem(429, "RATE_LIMITED");
    assert!(over.headers.contains_key("retry-after"));
    get(&per_user, "/api/v1/me/points", Some(&bob_here))
        .await
        .ok(200);
    per_user.stop().await;
    // 504: the silent product server never answers within the deadline.
    let slow = call(
        &strict,
        Method::GET,
        "/api/v1/products",
        None,
        &[("Prefer", "wait=1")],
        None,
    )
    .await;
    slow.problem(504, "DEADLINE_EXCEEDED");

    // 503 with Retry-After: the coupon server is down.
    mesh.coupon.kill().await;
    let down = get(&bff, "/api/v1/me/coupons", Some(&ann)).await;
    down.problem(503, "MESH_UNAVAILABLE");
    assert!(down.headers.contains_key("retry-after"));
    // 202 with Location: the point server is down, so the saga cannot
    // finish within the one second the client waits.
    mesh.point.kill().await;
    let pending = call(
        &bff,
        Method::POST,
        "/api/v1/orders",
        Some(&ann),
        &[("Idempotency-Key", "pending-1"), ("Prefer", "wait=1")],
        Some(json!({"lines": [{"productId": desk, "quantity": 1}]})),
    )
    .await;
    let order = pending.ok(202);
    assert_eq!(order["state"], "pending", "{order:#}");
    assert_eq!(
        pending.headers["location"],
        format!("/api/v1/orders/{}", order["orderId"].as_str().unwrap()).as_str()
    );

    hold.abort();
    strict.stop().await;
    bff.stop().await;
    strict_point.kill().await;
    mesh.coupon.start().await;
    mesh.point.start().await;
    mesh.shutdown().await;
}

/// The bounds the BFF checks at the edge are the mesh's own.
#[test]
fn the_edge_checks_the_mesh_bounds() {
    use commerce_bff::api::{orders, points};
    assert_eq!(points::MAX_CHARGE, point_service::domain::MAX_CHARGE);
    assert_eq!(
        orders::MAX_LINES,
        order_orchestrator::domain::order::MAX_LINES
    );
    assert_eq!(
        orders::MAX_QUANTITY,
        order_orchestrator::domain::order::MAX_QUANTITY
    );
}

#[tokio::test]
async fn an_order_whose_client_went_away_is_placed_once_and_found_again_by_its_key() {
    let mut mesh = Mesh::start(1).await;
    let bff = Bff::start(&mesh).await;
    let ops = bff.operator_token();
    let ann = bff.token("ann");
    let (_, [desk, _], _) = seed(&bff, &ops).await;
    post(
        &bff,
        "/api/v1/me/points/charges",
        &ann,
        Some("seed"),
        json!({"amount": 100_000}),
    )
    .await
    .ok(201);

    // The point server is down, so the saga waits on deduct_points; the
    // client gives up after 300 ms and closes its connection, which drops
    // the BFF's handler and its call to the orchestrator mid-flight.
    mesh.point.kill().await;
    let gone = http()
        .post(bff.at("/api/v1/orders"))
        .bearer_auth(&ann)
        .header("Idempotency-Key", "gone-1")
        .timeout(Duration::from_millis(300))
        .json(&json!({"lines": [{"productId": desk, "quantity": 2}]}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up: {gone:?}");
    mesh.point.start().await;

    // The same key finds the one order the dropped call placed, which
    // settles; nothing was placed or taken twice.
    let order = shop::eventually(&mesh, "the order settled", || async {
        let again = post(
            &bff,
            "/api/v1/orders",
            &ann,
            Some("gone-1"),
            json!({"lines": [{"productId": desk, "quantity": 2}]}),
        )
        .await;
        assert!(
            matches!(again.status.as_u16(), 201 | 202),
            "{:#}",
            again.body
        );
        (again.status == StatusCode::CREATED).then_some(again.body)
    })
    .await;
    assert_eq!(order["state"], "confirmed", "{order:#}");
    assert_eq!(
        get(&bff, "/api/v1/orders", Some(&ann)).await.ok(200)["total"],
        1
    );
    assert_eq!(shop::stock(&mesh, desk).await.available, 8);
    assert_eq!(
        get(&bff, "/api/v1/me/points", Some(&ann)).await.ok(200)["balance"],
        76_000
    );

    bff.stop().await;
    mesh.shutdown().await;
}
