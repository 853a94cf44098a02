# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing scripts
# What the deploy scripts share: where things are, logging, running as root,
# the database clients and accounts, grpcurl, cargo and the server processes.
# Sourced, never run; the sourcing script sets LOG_TAG first.

# A failure inside $(...) fails the assignment too, as with set -e elsewhere.
shopt -s inherit_errexit

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$REPO_ROOT/.run"
TOOLS_BIN="$REPO_ROOT/.tools/bin"

# The MariaDB/MySQL server and the account every service and test uses.
DB_HOST=127.0.0.1
DB_PORT=3306
DB_USER=commerce
DB_PASSWORD="${COMMERCE_DB_PASSWORD:-commerce}"
REDIS_PORT=6379

# The servers, in start order: the three saga participants, the order
# orchestrator that calls them, then the BFF in front of them all (REST for
# apps, the operator console; no database of its own). Per server: its binary (also its cargo
# package), database, listen address and the variable that sets it. The
# *_ADDR variables are listen addresses here; up.sh hands the participants'
# addresses to the orchestrator as flags (--product-addr http://...).
SERVICES=(product point coupon orchestrator bff)
PARTICIPANTS=(product point coupon)
declare -A SERVICE_BINARY=(
    [product]=product-service
    [point]=point-service
    [coupon]=coupon-service
    [orchestrator]=order-orchestrator
    [bff]=commerce-bff
    [traces]=commerce-traces
    [prometheus]=prometheus
)
# What up.sh runs beside the servers so that their traces and metrics can be
# seen (README.md, "Seeing an order"): the trace viewer the servers export
# their spans to, and Prometheus scraping them with the alert rules and the
# saga console. Started before the servers, stopped after them.
OBSERVERS=(traces prometheus)
TRACES_ADDR="${TRACES_ADDR:-127.0.0.1:16686}"
TRACES_OTLP_ADDR="${TRACES_OTLP_ADDR:-127.0.0.1:4317}"
PROMETHEUS_ADDR="${PROMETHEUS_ADDR:-127.0.0.1:9090}"
declare -A SERVICE_DATABASE=(
    [product]=commerce_product
    [point]=commerce_point
    [coupon]=commerce_coupon
    [orchestrator]=commerce_order
)
declare -A SERVICE_ADDR_VAR=(
    [product]=PRODUCT_ADDR
    [point]=POINT_ADDR
    [coupon]=COUPON_ADDR
    [orchestrator]=ORDER_ADDR
    [bff]=BFF_ADDR
)
declare -A SERVICE_ADDR=(
    [product]="${PRODUCT_ADDR:-127.0.0.1:50052}"
    [point]="${POINT_ADDR:-127.0.0.1:50053}"
    [coupon]="${COUPON_ADDR:-127.0.0.1:50054}"
    [orchestrator]="${ORDER_ADDR:-127.0.0.1:50051}"
    [bff]="${BFF_ADDR:-127.0.0.1:8080}"
)
# Where each server serves its Prometheus metrics (`--metrics-listen`; the
# ports deploy/prometheus/prometheus.yml scrapes).
declare -A SERVICE_METRICS_ADDR=(
    [orchestrator]="${ORDER_METRICS_ADDR:-127.0.0.1:9451}"
    [product]="${PRODUCT_METRICS_ADDR:-127.0.0.1:9452}"
    [point]="${POINT_METRICS_ADDR:-127.0.0.1:9453}"
    [coupon]="${COUPON_METRICS_ADDR:-127.0.0.1:9454}"
    [bff]="${BFF_METRICS_ADDR:-127.0.0.1:9480}"
)
# The orchestrator's name in saga leases. Stable, so a restarted orchestrator
# resumes the sagas it was driving at once instead of after their leases expire.
ORCHESTRATOR_INSTANCE_ID=orchestrator-1

log() { printf '%s: %s\n' "${LOG_TAG:-deploy}" "$*"; }
die() {
    printf '%s: error: %s\n' "${LOG_TAG:-deploy}" "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed; run this script as root"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { addr_open "127.0.0.1:$1"; }

# True when something accepts TCP connections on HOST:PORT.
addr_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}

# The MariaDB client programs, or MySQL's when only those are installed.
db_client() { if have mariadb; then echo mariadb; else echo mysql; fi; }
db_admin() { if have mariadb-admin; then echo mariadb-admin; else echo mysqladmin; fi; }

# The service account over TCP, as the services connect. Extra args follow.
commerce_sql() {
    MYSQL_PWD="$DB_PASSWORD" "$(db_client)" --protocol=tcp -h"$DB_HOST" -P"$DB_PORT" \
        -u"$DB_USER" --connect-timeout=5 "$@"
}

# mysql://commerce:<password>@127.0.0.1:3306 (the password percent-encoded).
db_server_url() {
    local password
    password="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$DB_PASSWORD")"
    printf 'mysql://%s:%s@%s:%s' "$DB_USER" "$password" "$DB_HOST" "$DB_PORT"
}

# The grpcurl the tests use: $GRPCURL, else .tools/bin/grpcurl, else PATH.
find_grpcurl() {
    if [[ -n "${GRPCURL:-}" && -x "${GRPCURL}" ]]; then
        echo "$GRPCURL"
    elif [[ -x "$TOOLS_BIN/grpcurl" ]]; then
        echo "$TOOLS_BIN/grpcurl"
    elif have grpcurl; then
        command -v grpcurl
    else
        return 1
    fi
}

# The Schemathesis the tests use: $SCHEMATHESIS, else .tools/bin/schemathesis
# (setup.sh's virtualenv), else PATH; only one that runs counts, so a
# virtualenv whose Python has gone is installed again.
find_schemathesis() {
    local candidate
    for candidate in "${SCHEMATHESIS:-}" "$TOOLS_BIN/schemathesis" "$(command -v schemathesis || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# "schemathesis, version 4.32.5" or the like, on one line.
schemathesis_version() { "$1" --version 2>/dev/null | head -n1; }

# The chromedriver the console's browser test uses: $CHROMEDRIVER, else PATH
# (Debian's chromium-driver puts it in /usr/bin).
find_chromedriver() {
    if [[ -n "${CHROMEDRIVER:-}" && -x "${CHROMEDRIVER}" ]]; then
        echo "$CHROMEDRIVER"
    elif have chromedriver; then
        command -v chromedriver
    else
        return 1
    fi
}

# The first of "$@" that runs with --version (empty arguments skipped).
first_that_runs() {
    local candidate
    for candidate in "$@"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The tools of the Kubernetes manifests' test (tests/tests/k8s.rs) and the
# contracts' test (tests/tests/contracts.rs), each found as the tests find
# it: its variable, else .tools/bin, else PATH; only one that runs counts.
# kubectl renders the kustomizations, kubernetes-validate checks them
# against the Kubernetes schemas, buf lints the contracts and compares them
# with their last release.
find_kubectl() {
    local candidate
    for candidate in "${KUBECTL:-}" "$TOOLS_BIN/kubectl" "$(command -v kubectl || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" version --client >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
find_kubernetes_validate() {
    first_that_runs "${KUBERNETES_VALIDATE:-}" "$TOOLS_BIN/kubernetes-validate" "$(command -v kubernetes-validate || true)"
}
find_buf() { first_that_runs "${BUF:-}" "$TOOLS_BIN/buf" "$(command -v buf || true)"; }
# The Prometheus the metrics test scrapes a mesh with (tests/tests/e2e/metrics.rs;
# promtool comes with it): $PROMETHEUS, else Debian's on the PATH.
find_prometheus() { first_that_runs "${PROMETHEUS:-}" "$(command -v prometheus || true)"; }

# Who should own files we create in the repository: its owner. Matters when a
# developer runs `sudo bash deploy/...` in a checkout they own.
repo_owner() { stat -c %U "$REPO_ROOT"; }

give_to_repo_owner() {
    local owner
    owner="$(repo_owner)"
    if [[ $EUID -eq 0 && "$owner" != root ]]; then
        chown -R "$owner:$(stat -c %G "$REPO_ROOT")" "$@"
    fi
}

# Cargo runs as the repository's owner when we are root through sudo, so
# `target/` never fills with root-owned files and the developer's own rustup
# toolchain (~/.cargo/bin, not on sudo's PATH) is used.
cargo_user() {
    local owner
    owner="$(repo_owner)"
    if [[ $EUID -eq 0 && -n "${SUDO_USER:-}" && "$SUDO_USER" != root && "$owner" == "$SUDO_USER" ]]; then
        echo "$owner"
    fi
}

# The cargo to run (for cargo_user when set), or nothing when there is none.
find_cargo() {
    local user home
    user="$(cargo_user)"
    if [[ -n "$user" ]]; then
        home="$(getent passwd "$user" | cut -d: -f6)"
        for candidate in "$home/.cargo/bin/cargo" /usr/local/cargo/bin/cargo /usr/local/bin/cargo /usr/bin/cargo; do
            [[ -x "$candidate" ]] && { echo "$candidate"; return 0; }
        done
        return 1
    fi
    if have cargo; then
        command -v cargo
    elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
    else
        return 1
    fi
}

# Runs cargo in the repository, as cargo_user when there is one. Variables
# the tests read are passed on explicitly because runuser starts clean.
run_cargo() {
    local cargo user home
    cargo="$(find_cargo)" || die "cargo not found; run deploy/setup.sh for instructions"
    user="$(cargo_user)"
    if [[ -z "$user" ]]; then
        (cd "$REPO_ROOT" && "$cargo" "$@")
        return
    fi
    home="$(getent passwd "$user" | cut -d: -f6)"
    local -a vars=("HOME=$home" "USER=$user" "PATH=$(dirname "$cargo"):/usr/local/bin:/usr/bin:/bin")
    local name
    for name in GRPCURL SCHEMATHESIS CHROMEDRIVER CHROMIUM KUBECTL KUBERNETES_VALIDATE BUF PROMETHEUS COMMERCE_TEST_MYSQL_URL CARGO_TARGET_DIR CARGO_TERM_COLOR RUST_LOG RUST_BACKTRACE TERM; do
        [[ -n "${!name:-}" ]] && vars+=("$name=${!name}")
    done
    (cd "$REPO_ROOT" && runuser -u "$user" -- env "${vars[@]}" "$cargo" "$@")
}

target_dir() {
    local dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    [[ "$dir" == /* ]] || dir="$REPO_ROOT/$dir"
    echo "$dir"
}

# --- service processes, under .run/ -------------------------------------

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$RUN_DIR/$1.log"; }

# The pid of a running service started by up.sh, or nothing. A pid file
# whose process is gone or is another program (pid reuse) does not count.
service_pid() {
    local name="$1" file pid
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "${SERVICE_BINARY[$name]}" || return 1
    echo "$pid"
}

# SIGTERM (the servers drain in-flight requests), a bounded wait, then SIGKILL.
stop_service() {
    local name="$1" pid tries
    if ! pid="$(service_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((tries = 0; tries < 40; tries++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$(pid_file "$name")"
    log "stopped $name (pid $pid)"
}
