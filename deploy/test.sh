#!/usr/bin/env bash
# THE test command: prepares the machine (deploy/setup.sh), drops databases
# that earlier test runs left behind, then runs every test of the workspace.
#
#   bash deploy/test.sh                      # everything
#   bash deploy/test.sh -p commerce-platform # one crate (replaces --workspace)
#   bash deploy/test.sh -- --nocapture       # extra args go to cargo test
set -euo pipefail

LOG_TAG="test"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/deploy/setup.sh"

# Tests create `commerce_t<hex>_<label>` databases and drop them when they
# pass; a failed test leaves its database for inspection. Drop those now, but
# not databases that may belong to a test still running elsewhere against this
# server: one a session is using, or one whose tables are younger than
# TEST_DB_MIN_AGE_MINUTES (a crash test's database while its server restarts).
TEST_DB_MIN_AGE_MINUTES="${TEST_DB_MIN_AGE_MINUTES:-10}"
[[ "$TEST_DB_MIN_AGE_MINUTES" =~ ^[0-9]+$ ]] || die "TEST_DB_MIN_AGE_MINUTES must be a whole number"

drop_leftover_databases() {
    local leftovers busy name dropped=0 kept=0 note=""
    leftovers="$(commerce_sql -N -B -e "SHOW DATABASES LIKE 'commerce\\_t%'")" ||
        die "cannot list databases as the commerce account"
    [[ -n "$leftovers" ]] || return 0
    busy="$(commerce_sql -N -B -e "
        SELECT DB FROM information_schema.PROCESSLIST WHERE DB LIKE 'commerce\\_t%'
        UNION
        SELECT TABLE_SCHEMA FROM information_schema.TABLES
         WHERE TABLE_SCHEMA LIKE 'commerce\\_t%'
           AND CREATE_TIME > NOW() - INTERVAL $TEST_DB_MIN_AGE_MINUTES MINUTE")" ||
        die "cannot tell which test databases are in use"
    while IFS= read -r name; do
        [[ "$name" =~ ^commerce_t[A-Za-z0-9_]+$ ]] || continue
        if grep -qxF -- "$name" <<<"$busy"; then
            kept=$((kept + 1))
            continue
        fi
        commerce_sql -e "DROP DATABASE IF EXISTS \`$name\`"
        dropped=$((dropped + 1))
    done <<<"$leftovers"
    ((kept == 0)) || note=" (kept $kept in use or younger than $TEST_DB_MIN_AGE_MINUTES min)"
    log "dropped $dropped leftover test database(s)$note"
}
drop_leftover_databases

# The tests find the server, grpcurl, Schemathesis, chromedriver, kubectl,
# kubernetes-validate, buf and Prometheus through these.
export COMMERCE_TEST_MYSQL_URL="${COMMERCE_TEST_MYSQL_URL:-$(db_server_url)}"
GRPCURL="$(find_grpcurl)" || die "grpcurl not found after setup"
export GRPCURL
SCHEMATHESIS="$(find_schemathesis)" || die "schemathesis not found after setup"
export SCHEMATHESIS
CHROMEDRIVER="$(find_chromedriver)" || die "chromedriver not found after setup"
export CHROMEDRIVER
KUBECTL="$(find_kubectl)" || die "kubectl not found after setup"
export KUBECTL
KUBERNETES_VALIDATE="$(find_kubernetes_validate)" || die "kubernetes-validate not found after setup"
export KUBERNETES_VALIDATE
BUF="$(find_buf)" || die "buf not found after setup"
export BUF
PROMETHEUS="$(find_prometheus)" || die "prometheus not found after setup"
export PROMETHEUS

# `-p NAME` narrows the run, which --workspace would override.
scope=(--workspace)
for arg in "$@"; do
    [[ "$arg" == -- ]] && break
    case "$arg" in
        -p | -p* | --package | --package=* | --workspace | --all) scope=() ;;
    esac
done

cargo_args=(test "${scope[@]}" --locked "$@")
log "cargo ${cargo_args[*]}"
run_cargo "${cargo_args[@]}"
