#!/usr/bin/env bash
# Stops the servers deploy/up.sh started (pids in .run/), the order
# orchestrator first so no saga watches its participants go away: SIGTERM so
# each drains its in-flight requests, a bounded wait, then SIGKILL. A saga
# still running is resumed from its step log by the next orchestrator with
# the same instance id. Then the trace viewer and Prometheus, if up.sh
# started them. MariaDB and Redis keep running; their data stays.
set -euo pipefail

LOG_TAG="down"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The servers in reverse start order, then the trace viewer and Prometheus.
order=()
for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    order+=("${SERVICES[$i]}")
done
stopped=0
for name in "${order[@]}" "${OBSERVERS[@]}"; do
    if service_pid "$name" >/dev/null; then
        stop_service "$name"
        stopped=$((stopped + 1))
    else
        rm -f "$(pid_file "$name")"
    fi
done
((stopped)) || log "no server started by deploy/up.sh is running"
