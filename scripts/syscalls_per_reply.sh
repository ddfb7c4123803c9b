#!/usr/bin/env bash
# syscalls_per_reply.sh — what one ping-pong reply costs each server: CPU
# time, context switches and system calls per reply, counted by `perf stat`
# on the server process while poolload drives it.
#
# Usage:
#   scripts/syscalls_per_reply.sh [-c CONNS] [-w WORKERS] [-d SECONDS]
#                                 [--servers LIST] [--no-build]
#
# Servers (--servers, comma-separated; default
# poolserver,poolserver_event,thread_per_conn,tokio_per_conn): as in
# scripts/compare.sh. For each, in turn: start it under `perf stat` (which
# follows every thread it creates) on 127.0.0.1 port 0, run
# `poolload -c CONNS` (64-byte ping-pong) for SECONDS, stop the server.
# Each reply is one send(2) of 64 bytes, so the server's sendto calls are
# its replies; every count is divided by them (start-up, the connects and
# the closes are counted too, and are negligible next to the replies).
#
# Defaults: 64 connections, 8 workers, 4 s. Needs perf (with the
# syscalls:* tracepoints, i.e. run as root or with perf_event_paranoid <= 1)
# and python3.
set -euo pipefail

CONNS=64
WORKERS=8
SECONDS_=4
BUILD=1
SERVER_LIST="poolserver,poolserver_event,thread_per_conn,tokio_per_conn"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -c|--connections) CONNS="$2"; shift 2 ;;
        -w|--workers) WORKERS="$2"; shift 2 ;;
        -d|--seconds) SECONDS_="$2"; shift 2 ;;
        --servers) SERVER_LIST="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "syscalls_per_reply.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
IFS=, read -r -a SERVERS <<< "$SERVER_LIST"

cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release"
if [[ $BUILD == 1 ]]; then
    cargo build --release --bins --examples
fi
ulimit -n "$(ulimit -Hn)"

declare -A CMD
POOL="$BIN/poolserver --addr 127.0.0.1:0 --workers $WORKERS --monitor-interval 0 --log-level info"
CMD[poolserver]="$POOL --dispatch connection"
CMD[poolserver_event]="$POOL --dispatch event"
CMD[thread_per_conn]="$BIN/examples/thread_per_connection --addr 127.0.0.1:0"
CMD[tokio_per_conn]="$BIN/examples/tokio_per_connection --addr 127.0.0.1:0"

TMP=$(mktemp -d)
SPID=""
cleanup() {
    [[ -n $SPID ]] && kill "$SPID" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

EVENTS="task-clock,context-switches,cpu-migrations"
for sc in sendto recvfrom epoll_ctl epoll_wait futex; do
    EVENTS+=",syscalls:sys_enter_$sc"
done

echo "connections=$CONNS workers=$WORKERS window=${SECONDS_}s cpus=$(nproc) commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) load=$(cut -d' ' -f1-3 /proc/loadavg)"
for name in "${SERVERS[@]}"; do
    [[ -n ${CMD[$name]:-} ]] || { echo "unknown server '$name'" >&2; exit 2; }
    : > "$TMP/$name.log"
    # shellcheck disable=SC2086  # the command line is meant to be split
    perf stat -x, -e "$EVENTS" -o "$TMP/$name.perf" -- ${CMD[$name]} 2>"$TMP/$name.log" &
    SPID=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$TMP/$name.log" | head -n 1 || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    [[ -n $addr ]] || { echo "$name did not start" >&2; cat "$TMP/$name.log" >&2; exit 1; }
    "$BIN/poolload" --addr "$addr" -c "$CONNS" -d "${SECONDS_}s" --json -q > "$TMP/$name.json" || true
    # Stop the server (perf's only child); perf then writes its counts.
    server=$(pgrep -P "$SPID" | head -n 1)
    [[ -n $server ]] && kill "$server"
    wait "$SPID" 2>/dev/null || true
    SPID=""
done

python3 - "$TMP" "${SERVERS[@]}" <<'EOF'
import json, sys
tmp, servers = sys.argv[1], sys.argv[2:]
cols = ["task-clock", "context-switches", "cpu-migrations", "recvfrom", "epoll_ctl",
        "epoll_wait", "futex"]
print("| server | round trips/s (poolload) | p99 µs | CPU µs / reply | context switches / reply "
      "| migrations / 1000 replies | recvfrom / reply | epoll_ctl / reply | epoll_wait / reply "
      "| futex / reply |")
print("|---" + "|---:" * 9 + "|")
for s in servers:
    counts = {}
    for line in open(f"{tmp}/{s}.perf"):
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        name = parts[2].replace("syscalls:sys_enter_", "")
        try:
            counts[name] = float(parts[0])
        except ValueError:
            counts[name] = 0.0
    replies = counts.get("sendto", 0) or 1
    rep = json.load(open(f"{tmp}/{s}.json"))
    row = [s, f"{rep['rt_per_sec']:,.0f}", f"{rep['p99_us']:,}",
           f"{counts.get('task-clock', 0) * 1000 / replies:.1f}",  # task-clock is in ms
           f"{counts.get('context-switches', 0) / replies:.2f}",
           f"{counts.get('cpu-migrations', 0) * 1000 / replies:.1f}"]
    row += [f"{counts.get(c, 0) / replies:.2f}" for c in cols[3:]]
    print("| " + " | ".join(row) + " |")
EOF
