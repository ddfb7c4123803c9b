#!/usr/bin/env bash
# compare.sh — poolserver against the two baseline servers, measured with
# poolload, on 127.0.0.1.
#
# Usage:
#   scripts/compare.sh [-r ROUNDS] [-d DURATION] [-w WORKERS] [-c CONNS]
#                      [-s SIZE] [--bulk-mib MIB] [--out DIR] [--no-build]
#
# Servers (all started once, on port 0, and kept for the whole run):
#   poolserver        --workers W --monitor-interval 0   (the uppercase loop)
#   poolserver_echo   the same with --service echo       (I/O ceiling: no transform)
#   thread_per_conn   examples/thread_per_connection.rs  (one std thread per connection)
#   tokio_per_conn    examples/tokio_per_connection.rs   (one tokio task per connection)
#
# Scenarios (poolload, every reply checked byte for byte):
#   pingpong  -c C -s SIZE for DURATION (after 1 s of warm-up): round trips/s, latency
#   bulk      one connection streaming MIB MiB: MB/s
#   connect   -c C loops of connect, one round trip, quit, close: connections/s
#
# Each scenario runs ROUNDS rounds against every server in turn (servers
# interleaved within a round, so a slow spell of a shared machine hits all
# of them alike); the table shows medians over the rounds and each
# server's ratio to the two baselines. Peak RSS (VmHWM) of every server is
# read from /proc after the last round. Raw poolload JSON lines, server logs
# and the table are kept in the output directory.
#
# Defaults: 5 rounds, 5 s per timed run, 8 workers, 8 connections, 64-byte
# messages, 256 MiB bulk; about 5 × (4 × 6 + 4 × 6 + 4 × 1) s ≈ 4.5 minutes.
#
# Needs: cargo, python3 (for the table), Linux /proc (for RSS).
set -euo pipefail

ROUNDS=5
DURATION=5s
WORKERS=8
CONNS=8
SIZE=64
BULK_MIB=256
OUT=""
BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -r|--rounds) ROUNDS="$2"; shift 2 ;;
        -d|--duration) DURATION="$2"; shift 2 ;;
        -w|--workers) WORKERS="$2"; shift 2 ;;
        -c|--connections) CONNS="$2"; shift 2 ;;
        -s|--size) SIZE="$2"; shift 2 ;;
        --bulk-mib) BULK_MIB="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
OUT="${OUT:-$TARGET_DIR/compare/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

if [[ $BUILD == 1 ]]; then
    echo "== building (release)" >&2
    cargo build --release --bins --examples
fi

# name -> command line; the order is the order within each round.
SERVERS=(poolserver poolserver_echo thread_per_conn tokio_per_conn)
declare -A CMD EXPECT PID ADDR
# --log-level stays at info: poolserver's "listening on ADDR" line is an info
# line, and with the monitor off nothing else is logged per connection.
CMD[poolserver]="$BIN/poolserver --addr 127.0.0.1:0 --workers $WORKERS --monitor-interval 0 --log-level info"
CMD[poolserver_echo]="$BIN/poolserver --addr 127.0.0.1:0 --workers $WORKERS --monitor-interval 0 --log-level info --service echo"
CMD[thread_per_conn]="$BIN/examples/thread_per_connection --addr 127.0.0.1:0"
CMD[tokio_per_conn]="$BIN/examples/tokio_per_connection --addr 127.0.0.1:0"
EXPECT[poolserver]=upper
EXPECT[poolserver_echo]=echo
EXPECT[thread_per_conn]=upper
EXPECT[tokio_per_conn]=upper

# Stop exactly the servers this script started (by pid), whatever happens.
cleanup() {
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

start_server() {
    local name="$1" log="$OUT/$1.log"
    # shellcheck disable=SC2086  # the command line is meant to be split
    ${CMD[$name]} 2>"$log" &
    PID[$name]=$!
    # Wait (at most 10 s) for the line naming the real address; poolserver
    # logs "... listening on 127.0.0.1:PORT with ...", the baselines print
    # "listening on 127.0.0.1:PORT".
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n 1)
        [[ -n $addr ]] && break
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        echo "compare.sh: $name did not report its address; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    ADDR[$name]=$addr
    echo "== $name (pid ${PID[$name]}) listening on $addr" >&2
}

# One poolload run, appended to results.jsonl as
# {"round":R,"server":S,"scenario":X,"exit":RC,"report":{...poolload --json...}}
run_load() {
    local round="$1" scenario="$2" name="$3"
    shift 3
    local line rc=0
    line=$("$BIN/poolload" --addr "${ADDR[$name]}" --expect "${EXPECT[$name]}" --json -q "$@") || rc=$?
    [[ -n $line ]] || line=null
    printf '{"round":%d,"server":"%s","scenario":"%s","exit":%d,"report":%s}\n' \
        "$round" "$name" "$scenario" "$rc" "$line" >> "$RESULTS"
    if [[ $rc != 0 ]]; then
        echo "   !! $scenario against $name: poolload exited $rc" >&2
    fi
}

for name in "${SERVERS[@]}"; do
    start_server "$name"
done

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "rustc: $(rustc --version)"
    echo "cpus: $(nproc)"
    echo "settings: rounds=$ROUNDS duration=$DURATION workers=$WORKERS connections=$CONNS size=$SIZE bulk_mib=$BULK_MIB"
} > "$OUT/meta.txt"

# Scenario by scenario: all rounds of one before the next, so that no
# scenario runs in the wake of another (a connect storm leaves thousands of
# sockets in TIME_WAIT and the scheduler's wake-up heuristics disturbed for
# a few seconds, which hurts long-lived worker threads more than fresh
# per-connection ones). Within a scenario the servers are interleaved and
# their order rotates every round.
run_scenario() {
    local scenario=$1
    shift
    for round in $(seq "$ROUNDS"); do
        echo "== $scenario round $round/$ROUNDS" >&2
        local order=()
        for i in "${!SERVERS[@]}"; do
            order+=("${SERVERS[$(( (i + round - 1) % ${#SERVERS[@]} ))]}")
        done
        for name in "${order[@]}"; do
            run_load "$round" "$scenario" "$name" "$@"
        done
    done
}
run_scenario pingpong --mode pingpong -c "$CONNS" -s "$SIZE" -d "$DURATION" --warmup 1s
run_scenario bulk --mode bulk -c 1 --bulk-mib "$BULK_MIB" --deadline 120s
run_scenario connect --mode connect -c "$CONNS" -s "$SIZE" -d "$DURATION" --warmup 1s

# Peak resident memory of each server over the whole run, before stopping it.
RSS="$OUT/rss.jsonl"
: > "$RSS"
for name in "${SERVERS[@]}"; do
    pid=${PID[$name]}
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    printf '{"server":"%s","vmhwm_kib":%d,"vmrss_kib":%d,"threads":%d}\n' \
        "$name" "${hwm:-0}" "${rss:-0}" "${threads:-0}" >> "$RSS"
done
cleanup
PID=()

python3 - "$RESULTS" "$RSS" "$OUT/meta.txt" <<'EOF' | tee "$OUT/table.md"
import json, statistics, sys

results_path, rss_path, meta_path = sys.argv[1:4]
runs = [json.loads(l) for l in open(results_path) if l.strip()]
rss = {r["server"]: r for r in (json.loads(l) for l in open(rss_path) if l.strip())}
servers = []
for r in runs:
    if r["server"] not in servers:
        servers.append(r["server"])
baselines = ["thread_per_conn", "tokio_per_conn"]

# The headline metric of each scenario, and whether higher is better.
scenarios = [
    ("pingpong", "rt_per_sec", "round trips/s"),
    ("bulk", "mb_per_sec", "MB/s"),
    ("connect", "connects_per_sec", "connections/s"),
]

def median_of(server, scenario, key):
    vals = [r["report"][key] for r in runs
            if r["server"] == server and r["scenario"] == scenario
            and r["report"] is not None and r["exit"] == 0]
    return statistics.median(vals) if vals else None

def failures(server, scenario):
    bad = 0
    for r in runs:
        if r["server"] != server or r["scenario"] != scenario:
            continue
        rep = r["report"]
        if r["exit"] != 0 or rep is None or rep["wrong_replies"] or rep["errors"] \
                or rep["never_served"]:
            bad += 1
    return bad

def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"

print("```")
print(open(meta_path).read().rstrip())
print("```\n")
for scenario, key, unit in scenarios:
    lat = scenario != "bulk"
    head = f"| {scenario}: {unit} (median) | value"
    head += " | p50 µs | p99 µs" if lat else ""
    head += "".join(f" | vs {b}" for b in baselines) + " | failed runs |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for s in servers:
        v = median_of(s, scenario, key)
        row = f"| {s} | {fmt(v, 1 if scenario == 'bulk' else 0)}"
        if lat:
            row += f" | {fmt(median_of(s, scenario, 'p50_us'))} | {fmt(median_of(s, scenario, 'p99_us'))}"
        for b in baselines:
            bv = median_of(b, scenario, key)
            row += f" | {v / bv:.2f}×" if v and bv else " | –"
        row += f" | {failures(s, scenario)} |"
        print(row)
    print()

print("| server | peak RSS (VmHWM) | RSS at end | threads at end |")
print("|---|---:|---:|---:|")
for s in servers:
    r = rss.get(s, {})
    print(f"| {s} | {r.get('vmhwm_kib', 0) / 1024:.1f} MiB | {r.get('vmrss_kib', 0) / 1024:.1f} MiB "
          f"| {r.get('threads', 0)} |")
EOF
echo "== raw results, logs and this table: $OUT" >&2
