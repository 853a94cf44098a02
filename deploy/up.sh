#!/usr/bin/env bash
# THE run command: prepares the machine (deploy/setup.sh), builds the four
# servers and the BFF in release mode, (re)starts them in the background with
# their pids and logs under .run/ (the product, point and coupon services
# first, then the order orchestrator that calls them, then the BFF), waits
# until each reports SERVING, seeds a small demo shop through grpcurl, places
# a demo order through the orchestrator, prints its trace, and prints a demo
# shopper's and an operator's token for the BFF's REST API and console.
# Beside the servers it runs the trace viewer they export their spans to and
# Prometheus (when installed; setup.sh installs it) with the alert rules and
# the saga console. Re-running restarts the servers, seeds only what is
# missing and returns the same demo order. Stop them with deploy/down.sh.
#
# Environment:
#   PRODUCT_ADDR, POINT_ADDR, COUPON_ADDR  listen addresses of the services (127.0.0.1:5005x)
#   ORDER_ADDR                             listen address of the orchestrator (127.0.0.1:50051)
#   BFF_ADDR                               listen address of the BFF (127.0.0.1:8080)
#   ORDER_METRICS_ADDR, PRODUCT_METRICS_ADDR, POINT_METRICS_ADDR, COUPON_METRICS_ADDR,
#   BFF_METRICS_ADDR                       where each serves Prometheus metrics (127.0.0.1:9451-9454, :9480)
#   JWT_SECRET_FILE                        the BFF's token secret (.run/jwt.secret, made once)
#   OBSERVE=0                              start neither the trace viewer nor Prometheus
#   TRACES_ADDR, TRACES_OTLP_ADDR          the trace viewer's web page and OTLP/gRPC port (127.0.0.1:16686, :4317)
#   PROMETHEUS_ADDR                        Prometheus' web page (127.0.0.1:9090)
#   OTEL_EXPORTER_OTLP_ENDPOINT            your own collector: the servers' spans go there, no viewer is started
#   LOG_FORMAT                             human (default) or json
#   COMMERCE_DB_PASSWORD                   as for setup.sh
#   SKIP_SEED=1                            start the servers; seed nothing, place no order
# and any server variable (DB_POOL_SIZE, REQUEST_TIMEOUT_MS, RUST_LOG, ...) or
# orchestrator variable (SAGA_LEASE_MS, FORWARD_RETRY_BUDGET_MS, ...), passed through.
set -euo pipefail

LOG_TAG="up"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEALTH_TRIES=120 # of 0.5 s; a first start also runs the migrations
DEMO_USER=demo-user
DEMO_CHARGE_KEY=deploy-up-demo-charge-1
DEMO_ORDER_KEY=deploy-up-demo-order-1
DEMO_TEMPLATE_NAME="Welcome: 3,000 KRW off"
ORDER_SETTLE_TRIES=60 # of 1 s: how long a PENDING demo order is watched

bash "$REPO_ROOT/deploy/setup.sh"

GRPCURL="$(find_grpcurl)" || die "grpcurl not found after setup"

# Mutual TLS unless INSECURE_PLAINTEXT=1 (development only): every server
# presents its certificate of TLS_DIR and demands one from its callers, and
# this script calls them as the operator.
TLS_DIR="${TLS_DIR:-$RUN_DIR/certs}"
if [[ "${INSECURE_PLAINTEXT:-0}" == 1 ]]; then
    log "INSECURE_PLAINTEXT=1: serving plaintext, no identities, every method open"
    TRANSPORT_FLAGS=(--insecure-plaintext)
    GRPCURL_AUTH=(-plaintext)
else
    TRANSPORT_FLAGS=(--tls-dir "$TLS_DIR")
    GRPCURL_AUTH=(-cacert "$TLS_DIR/ca.pem" -cert "$TLS_DIR/operator.pem" -key "$TLS_DIR/operator.key")
fi

# ------------------------------------------------------------------ build --

binaries=() packages=()
for name in "${SERVICES[@]}"; do
    binaries+=("${SERVICE_BINARY[$name]}")
    packages+=(-p "${SERVICE_BINARY[$name]}")
done
log "building ${binaries[*]}, commerce-mesh and commerce-traces (release)"
# One build, so the dependencies are compiled once for all of them:
# commerce-mesh is the operators' tool (`events tail`, `certs`; see
# README.md), commerce-traces the trace viewer ("Seeing an order").
run_cargo build --release --locked --bins "${packages[@]}" -p commerce-e2e -p commerce-traces
if [[ "${INSECURE_PLAINTEXT:-0}" != 1 ]]; then
    # The development CA and every identity's certificate, kept while valid.
    "$(target_dir)/release/commerce-mesh" certs "$TLS_DIR" | sed 's/^/    /'
    give_to_repo_owner "$TLS_DIR"
fi

# ------------------------------------------------------------------ start --

mkdir -p "$RUN_DIR"
# Keeps .run/ out of git without touching the repository's .gitignore.
echo '*' >"$RUN_DIR/.gitignore"

# Stops what an earlier up.sh started, the orchestrator first, so no saga
# watches its participants go away.
stop_running() {
    local i name
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        name="${SERVICES[$i]}"
        if service_pid "$name" >/dev/null; then
            log "$name is running; restarting it"
            stop_service "$name"
        fi
    done
}

start_service() {
    local name="$1" binary log
    binary="$(target_dir)/release/${SERVICE_BINARY[$name]}"
    [[ -x "$binary" ]] || die "$binary is missing after the build"
    # Another process on the port would answer the health checks for us.
    addr_open "${SERVICE_ADDR[$name]}" &&
        die "${SERVICE_ADDR[$name]} is taken by a process up.sh did not start; stop it or set ${SERVICE_ADDR_VAR[$name]}"
    addr_open "${SERVICE_METRICS_ADDR[$name]}" &&
        die "${SERVICE_METRICS_ADDR[$name]} (metrics) is taken by a process up.sh did not start; stop it or set ${SERVICE_ADDR_VAR[$name]/%_ADDR/_METRICS_ADDR}"
    # Flags rather than variables, so a DATABASE_URL or LISTEN_ADDR exported
    # in this shell cannot send all four servers to one place.
    local -a args=(
        --listen "${SERVICE_ADDR[$name]}"
        --metrics-listen "${SERVICE_METRICS_ADDR[$name]}"
        --log-format "${LOG_FORMAT:-human}"
        "${TRANSPORT_FLAGS[@]}"
    )
    if [[ "$name" == bff ]]; then
        # The mesh's addresses as URIs; it calls them as `bff` and `operator`.
        args+=(
            --jwt-secret-file "$JWT_SECRET_FILE"
            --orchestrator-addr "http://${SERVICE_ADDR[orchestrator]}"
            --product-addr "http://${SERVICE_ADDR[product]}"
            --point-addr "http://${SERVICE_ADDR[point]}"
            --coupon-addr "http://${SERVICE_ADDR[coupon]}"
        )
    else
        args+=(--database-url "$(db_server_url)/${SERVICE_DATABASE[$name]}")
    fi
    if [[ "$name" == orchestrator ]]; then
        # The orchestrator reads PRODUCT_ADDR etc. as the participants' URIs,
        # while here they are listen addresses: the flags settle it.
        args+=(
            --instance-id "$ORCHESTRATOR_INSTANCE_ID"
            --product-addr "http://${SERVICE_ADDR[product]}"
            --point-addr "http://${SERVICE_ADDR[point]}"
            --coupon-addr "http://${SERVICE_ADDR[coupon]}"
        )
    fi
    # ORCHESTRATOR_CRASH_AT is the tests' fault injection: never inherited.
    spawn "$name" env -u ORCHESTRATOR_CRASH_AT NO_COLOR=1 "$binary" "${args[@]}"
}

# spawn NAME COMMAND...: in the background with nohup, its log
# .run/NAME.log (the previous one kept as .log.prev), its pid .run/NAME.pid.
spawn() {
    local name="$1" log
    shift
    log="$(log_file "$name")"
    [[ -f "$log" ]] && mv -f "$log" "$log.prev"
    nohup "$@" >"$log" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
    give_to_repo_owner "$RUN_DIR"
    log "started $name (pid $!) on $(health_addr "$name"), log .run/$name.log"
}

# Where NAME answers its health check.
health_addr() {
    case "$1" in
    traces) echo "$TRACES_ADDR" ;;
    prometheus) echo "$PROMETHEUS_ADDR" ;;
    *) echo "${SERVICE_ADDR[$1]}" ;;
    esac
}

# NAME's health, in the words of the gRPC health check: the gRPC servers
# are asked over gRPC, the BFF, the trace viewer and Prometheus over HTTP.
health() {
    local path
    case "$1" in
    bff | traces) path=/healthz ;;
    prometheus) path=/-/ready ;;
    *)
        "$GRPCURL" "${GRPCURL_AUTH[@]}" -max-time 2 "${SERVICE_ADDR[$1]}" grpc.health.v1.Health/Check 2>/dev/null || true
        return 0
        ;;
    esac
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://$(health_addr "$1")$path" 2>/dev/null && echo '"SERVING"'
    return 0
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
        if [[ "$(health "$name")" == *'"SERVING"'* ]]; then
            log "$name is SERVING on $(health_addr "$name")"
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$(log_file "$name")" >&2 || true
    die "$name did not report SERVING within $((HEALTH_TRIES / 2)) s (log above)"
}

stop_running

# ----------------------------------------------------- traces and metrics --

OBSERVE="${OBSERVE:-1}"
TRACES_RUNNING=0
PROMETHEUS_RUNNING=0

if [[ "$OBSERVE" != 1 ]]; then
    log "OBSERVE=$OBSERVE: no trace viewer, no Prometheus"
else
    if [[ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
        log "the servers export their spans to OTEL_EXPORTER_OTLP_ENDPOINT=$OTEL_EXPORTER_OTLP_ENDPOINT; no trace viewer started"
    else
        traces_binary="$(target_dir)/release/commerce-traces"
        # A running viewer keeps the traces it holds (in memory) unless it
        # was built anew since it started.
        if service_pid traces >/dev/null && [[ ! "$traces_binary" -nt "$(pid_file traces)" ]]; then
            log "the trace viewer is running; keeping it and its traces"
        else
            stop_service traces
            for addr in "$TRACES_ADDR" "$TRACES_OTLP_ADDR"; do
                addr_open "$addr" &&
                    die "$addr (trace viewer) is taken by a process up.sh did not start; stop it, set TRACES_ADDR / TRACES_OTLP_ADDR, or OBSERVE=0"
            done
            spawn traces "$traces_binary" serve \
                --otlp-listen "$TRACES_OTLP_ADDR" --http-listen "$TRACES_ADDR"
        fi
        wait_serving traces
        # Every server started below exports its spans there, every
        # second rather than the SDK's 5 s, so a trace shows at once.
        export OTEL_EXPORTER_OTLP_ENDPOINT="http://$TRACES_OTLP_ADDR"
        export OTEL_BSP_SCHEDULE_DELAY="${OTEL_BSP_SCHEDULE_DELAY:-1000}"
        TRACES_RUNNING=1
    fi
    if prometheus_binary="$(find_prometheus)"; then
        stop_service prometheus
        addr_open "$PROMETHEUS_ADDR" &&
            die "$PROMETHEUS_ADDR (Prometheus) is taken by a process up.sh did not start; stop it, set PROMETHEUS_ADDR, or OBSERVE=0"
        # deploy/prometheus/prometheus.yml scrapes the default metrics ports.
        spawn prometheus "$prometheus_binary" \
            --config.file="$REPO_ROOT/deploy/prometheus/prometheus.yml" \
            --storage.tsdb.path="$RUN_DIR/prometheus" \
            --web.listen-address="$PROMETHEUS_ADDR" \
            --web.console.templates="$REPO_ROOT/deploy/prometheus/consoles" \
            --web.console.libraries="$REPO_ROOT/deploy/prometheus/console_libraries"
        wait_serving prometheus
        PROMETHEUS_RUNNING=1
    else
        log "prometheus not found (deploy/setup.sh installs Debian's): metrics are served, not scraped"
    fi
fi

# ---------------------------------------------------------------- servers --

for name in "${PARTICIPANTS[@]}"; do
    start_service "$name"
done
for name in "${PARTICIPANTS[@]}"; do
    wait_serving "$name"
done
# Its participants answer: the orchestrator's first look for unfinished sagas
# (its own, after a restart) finds them reachable.
start_service orchestrator
wait_serving orchestrator
# The BFF signs and checks tokens with this secret, made once (0600).
JWT_SECRET_FILE="${JWT_SECRET_FILE:-$RUN_DIR/jwt.secret}"
if [[ ! -s "$JWT_SECRET_FILE" ]]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$JWT_SECRET_FILE")
    give_to_repo_owner "$JWT_SECRET_FILE"
    log "made the BFF's token secret ${JWT_SECRET_FILE#"$REPO_ROOT"/}"
fi
start_service bff
wait_serving bff

# ------------------------------------------------------------------- seed --

# rpc SERVICE METHOD JSON [MAX_SECONDS]: one call; the JSON response on
# stdout. A failed call prints grpcurl's error (code, message and details) to
# stderr and returns 1. grpcurl sends the time limit as the call's deadline.
rpc() {
    local errors
    errors="$(mktemp)"
    if ! "$GRPCURL" "${GRPCURL_AUTH[@]}" -max-time "${4:-10}" -d "$3" "${SERVICE_ADDR[$1]}" "$2" 2>"$errors"; then
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
value = eval(sys.argv[1], {"d": d, "args": sys.argv[2:], "int": int, "sum": sum, "sorted": sorted})
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

# Places the demo order through the orchestrator (two of the on-sale product
# with the lowest id, one of the next, with the demo coupon) and prints it
# once its saga has settled. The fixed idempotency key makes every later run
# get the same order back, whatever state it has reached since.
place_demo_order() {
    local coupon_id="$1" listing lines order tries
    listing="$(rpc product commerce.product.v1.CatalogService/ListProducts '{"size": 100}')"
    lines="$(json '[{"productId": int(p["id"]), "quantity": q} for p, q in zip(sorted([p for p in d.get("products", []) if p.get("status") == "PRODUCT_STATUS_ON_SALE" and int(p.get("stock", {}).get("available", 0)) >= 2], key=lambda p: int(p["id"])), [2, 1])]' <<<"$listing")"
    if [[ "$lines" == "[]" ]]; then
        log "no product on sale with stock; placing no demo order" >&2
        return 1
    fi
    # The orchestrator answers within the call's deadline, at the latest
    # with PENDING while the saga goes on.
    if ! order="$(rpc orchestrator commerce.order.v1.OrderService/PlaceOrder \
        "{\"userId\": \"$DEMO_USER\", \"lines\": $lines, \"userCouponId\": $coupon_id, \"idempotencyKey\": \"$DEMO_ORDER_KEY\"}" 30)"; then
        log "(IDEMPOTENCY_KEY_REUSED would mean an earlier up.sh placed the demo order with other products; ListOrders shows it)" >&2
        return 1
    fi
    for ((tries = 0; tries < ORDER_SETTLE_TRIES; tries++)); do
        [[ "$(json 'd.get("state", "")' <<<"$order")" == ORDER_STATE_PENDING ]] || break
        ((tries > 0)) || log "the demo order is PENDING (a participant is slow or down); waiting for its saga" >&2
        sleep 1
        order="$(rpc orchestrator commerce.order.v1.OrderService/GetOrder \
            "{\"orderId\": \"$(json 'd["orderId"]' <<<"$order")\", \"userId\": \"$DEMO_USER\"}")"
    done
    echo "$order"
}

# The order, one line of totals and one per line (JSON on stdin).
show_order() {
    python3 -c "$(
        cat <<'PY'
import json, sys
o = json.load(sys.stdin)
amount = lambda key: int(o.get(key, 0))
print(f"    {o.get('state')}: subtotal {amount('subtotal')}, discount {amount('discount')}, pointsPaid {amount('pointsPaid')}")
if o.get("reason"):
    print(f"    reason {o['reason']}: {o.get('reasonMessage', '')}")
for line in o.get("lines", []):
    print(f"    {int(line.get('quantity', 0))} x {line.get('productName', '?')} (product {line['productId']})"
          f" at {int(line.get('unitPrice', 0))} = {int(line.get('lineTotal', 0))}")
PY
    )"
}

# A saga's step log, one event a line, with what each step returned or the
# error it met (GetSaga's JSON on stdin).
show_saga_log() {
    python3 -c "$(
        cat <<'PY'
import json, sys
d = json.load(sys.stdin)
print(f"    {'seq':>4}  {'step':<15} {'direction':<11} {'attempt':>7}  {'outcome':<10} result")
for e in d.get("log", []):
    note = e.get("error", "")
    if e.get("responseJson"):
        response = json.loads(e["responseJson"])
        response.pop("output", None)
        lines = response.pop("lines", None)
        response.update(response.pop("pricing", {}))
        note = ", ".join(f"{k} {v}" for k, v in response.items())
        if lines is not None:
            note = f"{len(lines)} lines; {note}"
    direction = e["direction"].removeprefix("STEP_DIRECTION_")
    outcome = e["outcome"].removeprefix("STEP_OUTCOME_")
    print(f"    {e['seq']:>4}  {e['stepName']:<15} {direction:<11} {e.get('attempt', 0):>7}  {outcome:<10} {note}".rstrip())
PY
    )"
}

ORDER_ID=ORDER_ID
SAGA_ID=SAGA_ID
if [[ "${SKIP_SEED:-}" == 1 ]]; then
    log "SKIP_SEED=1: not seeding, no demo order"
else
    seed_catalogue
    seed_points
    coupon_id="$(seed_coupon)"
    if order="$(place_demo_order "$coupon_id")"; then
        ORDER_ID="$(json 'd["orderId"]' <<<"$order")"
        SAGA_ID="$(json 'd["sagaId"]' <<<"$order")"
        log "demo order $ORDER_ID of $DEMO_USER (PlaceOrder with idempotency key $DEMO_ORDER_KEY; placed $(json 'd.get("createdAt", "")' <<<"$order")):"
        show_order <<<"$order"
        if saga="$(rpc orchestrator commerce.order.v1.SagaAdminService/GetSaga "{\"sagaId\": \"$SAGA_ID\"}")"; then
            log "its saga $SAGA_ID is $(json 'd["saga"]["state"]' <<<"$saga"); the step log (SagaAdminService/GetSaga):"
            show_saga_log <<<"$saga"
        fi
        # Its trace, if the running viewer received it: an order an earlier
        # run placed went to the viewer of that run (this one started at
        # its pid file's time).
        placed="$(json 'd.get("createdAt", "")' <<<"$order")"
        if ((TRACES_RUNNING)) && python3 -c 'import datetime, sys
placed = datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00")).timestamp()
sys.exit(0 if placed >= float(sys.argv[2]) else 1)' "$placed" "$(stat -c %Y "$(pid_file traces)")" 2>/dev/null; then
            # The servers export in batches (every second, above): the
            # trace is printed once no batch has added to it for 3 s.
            if trace="$("$(target_dir)/release/commerce-traces" show --saga-id "$SAGA_ID" \
                --from "http://$TRACES_ADDR" --wait-secs 20 --settle-ms 3000 2>&1)"; then
                log "its trace, as the trace viewer received it from the four servers (http://$TRACES_ADDR/?saga_id=$SAGA_ID):"
                sed 's/^/    /' <<<"$trace"
            else
                log "its trace did not reach the trace viewer: $trace"
            fi
        elif ((TRACES_RUNNING)); then
            log "the demo order was placed by an earlier run, before this trace viewer started: to see a trace, place an order (README.md, \"Seeing an order\")"
        fi
    fi
fi

# ------------------------------------------------------------- try next --

g="$GRPCURL"
[[ "$g" == "$REPO_ROOT"/* ]] && g="${g#"$REPO_ROOT"/}"
P="${SERVICE_ADDR[product]}" T="${SERVICE_ADDR[point]}" C="${SERVICE_ADDR[coupon]}" O="${SERVICE_ADDR[orchestrator]}"
auth="${GRPCURL_AUTH[*]}"
auth="${auth//"$REPO_ROOT"\//}"
log "the mesh is up. Try (from $REPO_ROOT, as the operator):"
cat <<EOF
    $g $auth $O list
    $g $auth -d '{"orderId": "$ORDER_ID", "userId": "$DEMO_USER"}' $O commerce.order.v1.OrderService/GetOrder
    $g $auth -d '{"userId": "$DEMO_USER", "page": 0, "size": 10}' $O commerce.order.v1.OrderService/ListOrders
    $g $auth -d '{"orderId": "$ORDER_ID", "userId": "$DEMO_USER"}' $O commerce.order.v1.OrderService/CancelOrder
    $g $auth -d '{"sagaId": "$SAGA_ID"}' $O commerce.order.v1.SagaAdminService/GetSaga
    $g $auth -d '{}' $O commerce.order.v1.SagaAdminService/CountSagas
    $g $auth -d '{"state": "SAGA_STATE_COMPLETED", "size": 10}' $O commerce.order.v1.SagaAdminService/ListSagas
    $g $auth -d '{"state": "SAGA_STATE_STUCK", "size": 10}' $O commerce.order.v1.SagaAdminService/ListSagas
    $g $auth -d '{"sagaId": "$SAGA_ID"}' $P commerce.saga.v1.SagaBarrierService/ListBarriers
    $g $auth -d '{"size": 10, "sort": "PRODUCT_SORT_PRICE_ASC"}' $P commerce.product.v1.CatalogService/ListProducts
    $g $auth -d '{"userId": "$DEMO_USER"}' $T commerce.point.v1.PointService/GetBalance
    $g $auth -d '{"userId": "$DEMO_USER", "page": 0, "size": 10}' $C commerce.coupon.v1.CouponService/ListUserCoupons
EOF

# ------------------------------------------------------------------ REST --

bff_binary="$(target_dir)/release/commerce-bff"
token() { "$bff_binary" --jwt-secret-file "$JWT_SECRET_FILE" token "$@"; }
DEMO_TOKEN="$(token --sub "$DEMO_USER")"
OPERATOR_TOKEN="$(token --sub demo-operator --role operator)"
# For scripts and the README's examples: `source .run/tokens.env`.
(umask 077 && printf 'BFF=http://%s\nTOKEN=%s\nOPS_TOKEN=%s\n' "${SERVICE_ADDR[bff]}" "$DEMO_TOKEN" "$OPERATOR_TOKEN" >"$RUN_DIR/tokens.env")
give_to_repo_owner "$RUN_DIR/tokens.env"
B="http://${SERVICE_ADDR[bff]}"
log "the BFF serves REST on $B (OpenAPI: $B/openapi.json). Tokens for 24 h, also in .run/tokens.env:"
cat <<EOF
    TOKEN=$DEMO_TOKEN
    OPS_TOKEN=$OPERATOR_TOKEN
EOF
log "try (after: source .run/tokens.env):"
cat <<EOF
    curl -s "\$BFF/api/v1/products?sort=price_asc&size=5"
    curl -s -H "Authorization: Bearer \$TOKEN" \$BFF/api/v1/me/points
    curl -s -H "Authorization: Bearer \$TOKEN" \$BFF/api/v1/orders/$ORDER_ID
    curl -s -H "Authorization: Bearer \$OPS_TOKEN" \$BFF/api/v1/admin/sagas/counts
EOF
log "the operator console, in a browser: $B/console#token=$OPERATOR_TOKEN"
log "each server's Prometheus metrics (README.md, Metrics):"
for name in "${SERVICES[@]}"; do
    printf '    %-12s http://%s/metrics\n' "$name" "${SERVICE_METRICS_ADDR[$name]}"
done
if ((PROMETHEUS_RUNNING)); then
    P="http://$PROMETHEUS_ADDR"
    log "Prometheus scrapes them every 5 s (deploy/prometheus/prometheus.yml); in a browser:"
    cat <<EOF
    $P/consoles/saga.html   the saga dashboard: STUCK and unfinished sagas, outcomes, each step's p50/p99, the outbox, graphs
    $P/alerts               the alert rules (deploy/prometheus/alerts.yml) and which fire
    $P/graph                any query, e.g. sum by (kind, outcome) (rate(commerce_saga_finished_total[1m]))
EOF
fi
if ((TRACES_RUNNING)); then
    log "every server's spans go to the trace viewer: http://$TRACES_ADDR (one trace per order; search by saga id)"
fi
log "README.md has one for every RPC and route; logs: .run/{product,point,coupon,orchestrator,bff}.log; stop with: sudo bash deploy/down.sh"
