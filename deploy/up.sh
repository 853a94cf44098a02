#!/usr/bin/env bash
# THE run command: prepares the machine (deploy/setup.sh), builds the three
# servers in release mode, (re)starts them in the background with their pids
# and logs under .run/, waits until each reports SERVING, and seeds a small
# demo shop through grpcurl. Re-running restarts the servers and seeds only
# what is missing. Stop them with deploy/down.sh.
#
# Environment:
#   PRODUCT_ADDR, POINT_ADDR, COUPON_ADDR  listen addresses (127.0.0.1:5005x)
#   LOG_FORMAT                             human (default) or json
#   COMMERCE_DB_PASSWORD                   as for setup.sh
#   SKIP_SEED=1                            start the servers, seed nothing
# and any server variable (DB_POOL_SIZE, REQUEST_TIMEOUT_MS, RUST_LOG, ...).
set -euo pipefail

LOG_TAG="up"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEALTH_TRIES=120 # of 0.5 s; a first start also runs the migrations
DEMO_USER=demo-user
DEMO_CHARGE_KEY=deploy-up-demo-charge-1
DEMO_SAGA=3f0c5e1a-6d2b-4c8e-9a7f-0d15ea5e0001
DEMO_TEMPLATE_NAME="Welcome: 3,000 KRW off"

bash "$REPO_ROOT/deploy/setup.sh"

GRPCURL="$(find_grpcurl)" || die "grpcurl not found after setup"

# ------------------------------------------------------------------ build --

log "building ${SERVICE_BINARY[*]} (release)"
run_cargo build --release --locked -p product-service -p point-service -p coupon-service

# ------------------------------------------------------------------ start --

mkdir -p "$RUN_DIR"
# Keeps .run/ out of git without touching the repository's .gitignore.
echo '*' >"$RUN_DIR/.gitignore"

start_service() {
    local name="$1" binary log
    binary="$(target_dir)/release/${SERVICE_BINARY[$name]}"
    [[ -x "$binary" ]] || die "$binary is missing after the build"
    if service_pid "$name" >/dev/null; then
        log "$name is running; restarting it"
        stop_service "$name"
    fi
    # Another process on the port would answer the health checks for us.
    addr_open "${SERVICE_ADDR[$name]}" &&
        die "${SERVICE_ADDR[$name]} is taken by a process up.sh did not start; stop it or set ${name^^}_ADDR"
    log="$(log_file "$name")"
    [[ -f "$log" ]] && mv -f "$log" "$log.prev"
    # Flags rather than variables, so a DATABASE_URL or LISTEN_ADDR exported
    # in this shell cannot send all three servers to one place.
    NO_COLOR=1 nohup "$binary" \
        --listen "${SERVICE_ADDR[$name]}" \
        --database-url "$(db_server_url)/commerce_$name" \
        --log-format "${LOG_FORMAT:-human}" \
        >"$log" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
    log "started $name (pid $!) on ${SERVICE_ADDR[$name]}, log .run/$name.log"
}

health() {
    "$GRPCURL" -plaintext -max-time 2 "${SERVICE_ADDR[$1]}" grpc.health.v1.Health/Check 2>/dev/null || true
}

wait_serving() {
    local name="$1" pid tries
    pid="$(<"$(pid_file "$name")")"
    for ((tries = 0; tries < HEALTH_TRIES; tries++)); do
        # kill -0, not service_pid: right after the fork the child may not
        # have exec'd the server yet.
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$(log_file "$name")" >&2 || true
            die "$name exited during start-up (log above, full log in .run/$name.log)"
        fi
        [[ "$(health "$name")" == *'"SERVING"'* ]] && return 0
        sleep 0.5
    done
    tail -n 20 "$(log_file "$name")" >&2 || true
    die "$name did not report SERVING within $((HEALTH_TRIES / 2)) s (log above)"
}

for name in "${SERVICES[@]}"; do
    start_service "$name"
done
give_to_repo_owner "$RUN_DIR"
for name in "${SERVICES[@]}"; do
    wait_serving "$name"
    log "$name is SERVING on ${SERVICE_ADDR[$name]}"
done

# ------------------------------------------------------------------- seed --

# rpc SERVICE METHOD JSON: one call; the JSON response on stdout. A failed
# call prints grpcurl's error (code and message) to stderr and returns 1.
rpc() {
    local errors
    errors="$(mktemp)"
    if ! "$GRPCURL" -plaintext -max-time 10 -d "$3" "${SERVICE_ADDR[$1]}" "$2" 2>"$errors"; then
        log "$2 failed:" >&2
        sed 's/^/    /' "$errors" >&2
        rm -f "$errors"
        return 1
    fi
    rm -f "$errors"
}

# json EXPRESSION [ARG...]: evaluates a Python expression over the JSON on
# stdin (bound to `d`; the ARGs are `args`) and prints the result. grpcurl
# prints int64 fields as strings and leaves out fields holding their default
# value (0, "", false, empty lists).
json() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
value = eval(sys.argv[1], {"d": d, "args": sys.argv[2:], "int": int, "sum": sum})
print(value if isinstance(value, (str, int)) else json.dumps(value))
' "$@"
}

seed_catalogue() {
    local listing total brand brand_id spec name price stock
    listing="$(rpc product commerce.product.v1.CatalogService/ListProducts '{"size": 100}')"
    total="$(json 'int(d.get("total", 0))' <<<"$listing")"
    if ((total > 0)); then
        log "catalogue already has $total product(s); not seeding products"
        return
    fi
    brand="$(rpc product commerce.product.v1.ProductAdminService/CreateBrand \
        '{"name": "Loopers Basics", "description": "Demo brand seeded by deploy/up.sh"}')"
    brand_id="$(json 'd["id"]' <<<"$brand")"
    for spec in "Everyday Tee|19000|100" "Denim Jacket|89000|20" "Canvas Sneakers|59000|50" "Wool Beanie|12000|30"; do
        IFS='|' read -r name price stock <<<"$spec"
        rpc product commerce.product.v1.ProductAdminService/CreateProduct \
            "{\"brandId\": $brand_id, \"name\": \"$name\", \"price\": $price, \"status\": \"PRODUCT_STATUS_ON_SALE\", \"stock\": $stock}" >/dev/null
    done
    log "seeded brand $brand_id (Loopers Basics) with 4 products in stock"
}

seed_points() {
    local balance
    # The fixed key makes this charge count once, however often up.sh runs
    # (a repeat replays the first answer, so the balance is read afresh).
    rpc point commerce.point.v1.PointService/Charge \
        "{\"userId\": \"$DEMO_USER\", \"amount\": 500000, \"idempotencyKey\": \"$DEMO_CHARGE_KEY\"}" >/dev/null
    balance="$(rpc point commerce.point.v1.PointService/GetBalance "{\"userId\": \"$DEMO_USER\"}")"
    log "$DEMO_USER: 500000 points charged once under key $DEMO_CHARGE_KEY; balance now $(json 'd.get("balance", "0")' <<<"$balance")"
}

# Prints the id of demo-user's demo coupon, issuing it first if needed.
seed_coupon() {
    local coupons coupon_id now until template template_id issued
    coupons="$(rpc coupon commerce.coupon.v1.CouponService/ListUserCoupons "{\"userId\": \"$DEMO_USER\", \"size\": 100}")"
    coupon_id="$(json 'next((c["id"] for c in d.get("coupons", []) if c.get("template", {}).get("name") == args[0]), "")' \
        "$DEMO_TEMPLATE_NAME" <<<"$coupons")"
    if [[ -n "$coupon_id" ]]; then
        log "$DEMO_USER already holds coupon $coupon_id ($DEMO_TEMPLATE_NAME)" >&2
        echo "$coupon_id"
        return
    fi
    now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    until="$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)"
    template="$(rpc coupon commerce.coupon.v1.CouponAdminService/CreateTemplate \
        "{\"name\": \"$DEMO_TEMPLATE_NAME\", \"kind\": \"DISCOUNT_KIND_FIXED\", \"value\": 3000, \"minOrderAmount\": 10000, \"validFrom\": \"$now\", \"validUntil\": \"$until\", \"totalQuantity\": 100}")"
    template_id="$(json 'd["id"]' <<<"$template")"
    issued="$(rpc coupon commerce.coupon.v1.CouponService/IssueCoupon \
        "{\"templateId\": $template_id, \"userId\": \"$DEMO_USER\"}")"
    coupon_id="$(json 'd["id"]' <<<"$issued")"
    log "coupon template $template_id ($DEMO_TEMPLATE_NAME, min order 10000, 100 issuable, until $until); issued coupon $coupon_id to $DEMO_USER" >&2
    echo "$coupon_id"
}

# Reserves two on-sale products for the demo saga and prints the reservation.
# The barrier replays the first result, so repeating this is harmless.
reserve_demo_stock() {
    local listing lines reservation
    listing="$(rpc product commerce.product.v1.CatalogService/ListProducts '{"size": 100, "sort": "PRODUCT_SORT_PRICE_ASC"}')"
    lines="$(json '[{"productId": p["id"], "quantity": q} for p, q in zip([p for p in d.get("products", []) if p.get("status") == "PRODUCT_STATUS_ON_SALE" and int(p.get("stock", {}).get("available", 0)) >= 2], [2, 1])]' <<<"$listing")"
    if [[ "$lines" == "[]" ]]; then
        log "no product on sale with stock; skipping the demo reservation" >&2
        return 1
    fi
    if ! reservation="$(rpc product commerce.product.v1.StockService/ReserveStock \
        "{\"sagaId\": \"$DEMO_SAGA\", \"lines\": $lines}")"; then
        log "(a released saga cannot reserve again); reading its reservation instead" >&2
        reservation="$(rpc product commerce.product.v1.StockService/GetReservation "{\"sagaId\": \"$DEMO_SAGA\"}")" || return 1
    fi
    echo "$reservation"
}

if [[ "${SKIP_SEED:-}" == 1 ]]; then
    log "SKIP_SEED=1: not seeding"
else
    seed_catalogue
    seed_points
    coupon_id="$(seed_coupon)"
    if reservation="$(reserve_demo_stock)"; then
        log "reservation of demo saga $DEMO_SAGA:"
        sed 's/^/    /' <<<"$reservation"
        subtotal="$(json 'sum(int(l.get("unitPrice", 0)) * int(l.get("quantity", 0)) for l in d.get("lines", []))' <<<"$reservation")"
        if quote="$(rpc coupon commerce.coupon.v1.CouponService/QuoteDiscount \
            "{\"userId\": \"$DEMO_USER\", \"userCouponId\": $coupon_id, \"orderAmount\": $subtotal}")"; then
            log "subtotal $subtotal KRW; coupon $coupon_id takes $(json 'd.get("discount", "0")' <<<"$quote") off; payable $(json 'd.get("payable", "0")' <<<"$quote") points"
        fi
    fi
fi

# ------------------------------------------------------------- try next --

g="$GRPCURL"
[[ "$g" == "$REPO_ROOT"/* ]] && g="${g#"$REPO_ROOT"/}"
P="${SERVICE_ADDR[product]}" T="${SERVICE_ADDR[point]}" C="${SERVICE_ADDR[coupon]}"
log "the mesh is up. Try (from $REPO_ROOT):"
cat <<EOF
    $g -plaintext $P list
    $g -plaintext -d '{"size": 10, "sort": "PRODUCT_SORT_PRICE_ASC"}' $P commerce.product.v1.CatalogService/ListProducts
    $g -plaintext -d '{"sagaId": "$DEMO_SAGA"}' $P commerce.product.v1.StockService/ConfirmReservation
    $g -plaintext -d '{"sagaId": "$DEMO_SAGA"}' $P commerce.saga.v1.SagaBarrierService/ListBarriers
    $g -plaintext -d '{"userId": "$DEMO_USER"}' $T commerce.point.v1.PointService/GetBalance
    $g -plaintext -d '{"userId": "$DEMO_USER", "page": 0, "size": 10}' $C commerce.coupon.v1.CouponService/ListUserCoupons
EOF
log "logs: .run/{product,point,coupon}.log; stop with: sudo bash deploy/down.sh"
