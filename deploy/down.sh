#!/usr/bin/env bash
# Stops the servers deploy/up.sh started (pids in .run/), the order
# orchestrator first so no saga watches its participants go away: SIGTERM so
# each drains its in-flight requests, a bounded wait, then SIGKILL. A saga
# still running is resumed from its step log by the next orchestrator with
# the same instance id. MariaDB and Redis keep running; their data stays.
set -euo pipefail

LOG_TAG="down"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stopped=0
for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    name="${SERVICES[$i]}"
    if service_pid "$name" >/dev/null; then
        stop_service "$name"
        stopped=$((stopped + 1))
    else
        rm -f "$(pid_file "$name")"
    fi
done
((stopped)) || log "no server started by deploy/up.sh is running"
