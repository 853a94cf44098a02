#!/usr/bin/env bash
# THE benchmark command: prepares the machine (deploy/setup.sh), builds the
# harness in release mode, and runs it. The harness starts its own mesh and
# baseline as processes on fresh `commerce_bench_*` databases (stop anything
# deploy/up.sh started first if the machine is small), and writes
# report.md, report.json and charts to target/bench/<UTC time>/.
#
#   bash deploy/bench.sh                            # every scenario, full size
#   bash deploy/bench.sh --levels 32 --orders 5000  # any `commerce-bench run` flag
set -euo pipefail

LOG_TAG="bench"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$REPO_ROOT/deploy/setup.sh"

log "building commerce-bench (release)"
run_cargo build --release --locked -p commerce-bench

out="$(target_dir)/bench/$(date -u +%Y%m%dT%H%M%SZ)"
log "running; report in $out"
BENCH_MYSQL_URL="$(db_server_url)" "$(target_dir)/release/commerce-bench" run --out "$out" "$@"
give_to_repo_owner "$(target_dir)/bench"
log "report: $out/report.md"
