#!/usr/bin/env bash
# Stops the servers deploy/up.sh started (pids in .run/): SIGTERM so they
# drain in-flight requests, a bounded wait, then SIGKILL. MariaDB and Redis
# keep running; their data stays.
set -euo pipefail

LOG_TAG="down"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stopped=0
for name in "${SERVICES[@]}"; do
    if service_pid "$name" >/dev/null; then
        stop_service "$name"
        stopped=$((stopped + 1))
    else
        rm -f "$(pid_file "$name")"
    fi
done
((stopped)) || log "no server started by deploy/up.sh is running"
