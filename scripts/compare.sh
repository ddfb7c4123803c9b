#!/usr/bin/env bash
# compare.sh — poolserver (both dispatch modes) against the two baseline
# servers, measured with poolload, on 127.0.0.1.
#
# Usage:
#   scripts/compare.sh [-r ROUNDS] [-d DURATION] [-w WORKERS] [-s SIZE]
#                      [--scenarios LIST] [--servers LIST] [--bulk-mib MIB]
#                      [--idle N] [--idle-interval DUR] [--idle-warmup DUR]
#                      [--pin SERVER_CPUS/LOAD_CPUS] [--out DIR] [--no-build]
#
# Servers (--servers, comma-separated; default
# poolserver,poolserver_event,thread_per_conn,tokio_per_conn):
#   poolserver        --workers W --dispatch connection (a worker per connection, start to close)
#   poolserver_event  --workers W --dispatch event --max-connections IDLE+2000
#                     (idle connections wait in the poller, not on a worker)
#   poolserver_echo   connection mode with --service echo (I/O ceiling: no transform)
#   thread_per_conn   examples/thread_per_connection.rs  (one std thread per connection)
#   tokio_per_conn    examples/tokio_per_connection.rs   (one tokio task per connection)
# The event server's --max-connections is raised above its default (10,000)
# so that the idle clients plus the others fit; it is still far below the
# 20,000 descriptors the script asks for.
#
# Scenarios (--scenarios, comma-separated, in this order; default all):
#   pingpong8     -c 8 ping-pong, SIZE-byte messages, DURATION after 1 s of warm-up
#   pingpong64    the same with 64 connections
#   pingpong512   the same with 512 connections
#   bulk          one connection streaming MIB MiB: MB/s
#   mixed         8 bulk streams (started 1 s before, stopped after) plus
#                 64 ping-pong connections at once: the ping-pong p99
#   connect       8 loops of connect, one round trip, quit, close: connections/s
#   idle10k       IDLE mostly idle connections (a 16-byte line every
#                 IDLE_INTERVAL each), nothing else: served, reply p99,
#                 server RSS and threads. They connect (paced, 64 at a
#                 time) during a warm-up of IDLE_WARMUP (default 8s), then
#                 DURATION is measured; one not yet connected by the end
#                 counts as never served
#   idle10k_pp8   pingpong8 beside those IDLE idle connections; each
#                 round first runs pingpong8 alone against the same server,
#                 so the ratio beside/alone compares runs seconds apart
#
# --pin SERVER_CPUS/LOAD_CPUS (for example --pin 1/0) runs the servers on
# one set of CPUs and poolload on another (taskset(1) lists), the way a
# server and its clients run on different machines. Without it both share
# every CPU, and each server's figures include how it competes with the
# load generator for them. A pinned server sees only its CPUs
# (sched_getaffinity), so event mode's running workers and tokio's
# threads follow them.
#
# Every reply is checked byte for byte by poolload. Each scenario gets
# freshly started servers (so each server's peak RSS, VmHWM, belongs to one
# scenario) and runs ROUNDS rounds; within a round the servers take turns,
# their order rotating every round, so a slow spell of a shared machine
# hits all of them alike. While each run lasts, the server's thread count
# (entries of /proc/PID/task) and RSS are sampled every 0.5 s.
# scripts/compare_table.py turns the results into medians, ratios and a
# check of the targets of issue 8; the raw poolload JSON lines
# (results.jsonl), the per-scenario server figures (servers.jsonl), server
# logs and the tables stay in the output directory.
#
# Defaults: 3 rounds, 5 s per timed run, 8 workers, 64-byte messages,
# 256 MiB bulk, 10,000 idle connections every 2 s; all scenarios against
# the four default servers take about 15 minutes on 2 cores.
#
# Needs: cargo, python3, Linux /proc. Raises the soft descriptor limit to
# the hard one (10,000 idle clients need 10,000 descriptors in poolload and
# as many in the server).
set -euo pipefail

ROUNDS=3
DURATION=5s
WORKERS=8
SIZE=64
BULK_MIB=256
IDLE=10000
IDLE_INTERVAL=2s
IDLE_WARMUP=8s
OUT=""
PIN=""
BUILD=1
ALL_SCENARIOS="pingpong8,pingpong64,pingpong512,bulk,mixed,connect,idle10k,idle10k_pp8"
SCENARIOS=$ALL_SCENARIOS
SERVER_LIST="poolserver,poolserver_event,thread_per_conn,tokio_per_conn"
ORIG_ARGS="$*"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -r|--rounds) ROUNDS="$2"; shift 2 ;;
        -d|--duration) DURATION="$2"; shift 2 ;;
        -w|--workers) WORKERS="$2"; shift 2 ;;
        -s|--size) SIZE="$2"; shift 2 ;;
        --scenarios) SCENARIOS="$2"; shift 2 ;;
        --servers) SERVER_LIST="$2"; shift 2 ;;
        --bulk-mib) BULK_MIB="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --idle-interval) IDLE_INTERVAL="$2"; shift 2 ;;
        --idle-warmup) IDLE_WARMUP="$2"; shift 2 ;;
        --pin) PIN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

IFS=, read -r -a SERVERS <<< "$SERVER_LIST"
# What the servers and poolload are started under: taskset with --pin.
ON_SERVER_CPUS=()
ON_LOAD_CPUS=()
if [[ -n $PIN ]]; then
    if [[ ! $PIN =~ ^[0-9,-]+/[0-9,-]+$ ]]; then
        echo "compare.sh: --pin wants SERVER_CPUS/LOAD_CPUS, for example 1/0 (got '$PIN')" >&2
        exit 2
    fi
    command -v taskset >/dev/null || { echo "compare.sh: --pin needs taskset (util-linux)" >&2; exit 2; }
    ON_SERVER_CPUS=(taskset -c "${PIN%/*}")
    ON_LOAD_CPUS=(taskset -c "${PIN#*/}")
fi
IFS=, read -r -a WANTED <<< "$SCENARIOS"
for s in "${WANTED[@]}"; do
    if [[ ",$ALL_SCENARIOS," != *",$s,"* ]]; then
        echo "compare.sh: unknown scenario '$s' (known: $ALL_SCENARIOS)" >&2
        exit 2
    fi
done

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
OUT="${OUT:-$TARGET_DIR/compare/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
SERVER_FIGS="$OUT/servers.jsonl"
: > "$RESULTS"
: > "$SERVER_FIGS"

ulimit -n "$(ulimit -Hn)"

if [[ $BUILD == 1 ]]; then
    echo "== building (release)" >&2
    cargo build --release --bins --examples
fi

# name -> command line.
declare -A CMD EXPECT PID ADDR
# --log-level stays at info: poolserver's "listening on ADDR" line is an info
# line, and with the monitor off nothing else is logged per connection.
POOL="$BIN/poolserver --addr 127.0.0.1:0 --workers $WORKERS --monitor-interval 0 --log-level info"
CMD[poolserver]="$POOL --dispatch connection"
CMD[poolserver_event]="$POOL --dispatch event --max-connections $((IDLE + 2000))"
CMD[poolserver_echo]="$POOL --dispatch connection --service echo"
CMD[thread_per_conn]="$BIN/examples/thread_per_connection --addr 127.0.0.1:0"
CMD[tokio_per_conn]="$BIN/examples/tokio_per_connection --addr 127.0.0.1:0"
EXPECT[poolserver]=upper
EXPECT[poolserver_event]=upper
EXPECT[poolserver_echo]=echo
EXPECT[thread_per_conn]=upper
EXPECT[tokio_per_conn]=upper
for name in "${SERVERS[@]}"; do
    if [[ -z ${CMD[$name]:-} ]]; then
        echo "compare.sh: unknown server '$name'" >&2
        exit 2
    fi
done

# Stop exactly the servers (and samplers, bulk loads) this script started,
# by pid, whatever happens.
EXTRA_PIDS=()
stop_servers() {
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
    PID=()
}
cleanup() {
    for p in "${EXTRA_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    stop_servers
}
trap cleanup EXIT

start_server() {
    local name="$1" scenario="$2" log="$OUT/$2.$1.log"
    # Created here, not by the background redirection, so the first look
    # at it below cannot race the server's start.
    : > "$log"
    # shellcheck disable=SC2086  # the command line is meant to be split
    "${ON_SERVER_CPUS[@]}" ${CMD[$name]} 2>"$log" &
    PID[$name]=$!
    # Wait (at most 10 s) for the line naming the real address; poolserver
    # logs "... listening on 127.0.0.1:PORT with ...", the baselines print
    # "listening on 127.0.0.1:PORT".
    local addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n 1 || true)
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
}

# Samples a server's thread count and RSS every 0.5 s until killed (at most
# 20 minutes), one "threads rss_kib" line each.
sampler() {
    local pid="$1" file="$2"
    for _ in $(seq 2400); do
        [[ -d /proc/$pid/task ]] || break
        local threads rss
        threads=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        echo "$threads ${rss:-0}" >> "$file"
        sleep 0.5
    done
}

# One poolload run (with its arguments) against server $1: sets REPORT to
# its JSON line (or null) and LOAD_RC to its exit status.
load() {
    local name="$1"
    shift
    LOAD_RC=0
    "${ON_LOAD_CPUS[@]}" "$BIN/poolload" --addr "${ADDR[$name]}" --expect "${EXPECT[$name]}" --json -q "$@" \
        > "$OUT/line.tmp" || LOAD_RC=$?
    REPORT=$(head -n 1 "$OUT/line.tmp")
    REPORT=${REPORT:-null}
}

# Appends one result line to results.jsonl:
# {"round":R,"server":S,"scenario":X,"exit":RC,"threads_max":T,"rss_max_kib":K,
#  "report":{...poolload --json...}[,"bulk":{...the mixed scenario's bulk run...}]
#  [,"alone":{...idle10k_pp8's ping-pong run without the idle ones...}]}
record() {
    local round="$1" scenario="$2" name="$3" rc="$4" report="$5" samples="$6" extra="${7:-}"
    local tmax rmax
    tmax=$(awk 'BEGIN {m = 0} $1 > m {m = $1} END {print m}' "$samples")
    rmax=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$samples")
    printf '{"round":%d,"server":"%s","scenario":"%s","exit":%d,"threads_max":%d,"rss_max_kib":%d,"report":%s%s}\n' \
        "$round" "$name" "$scenario" "$rc" "$tmax" "$rmax" "$report" "$extra" >> "$RESULTS"
    if [[ $rc != 0 ]]; then
        echo "   !! $scenario against $name: poolload exited $rc" >&2
    fi
}

# The poolload arguments of each scenario (mixed adds its bulk streams).
scenario_args() {
    case "$1" in
        pingpong8) echo "--mode pingpong -c 8 -s $SIZE -d $DURATION --warmup 1s" ;;
        pingpong64) echo "--mode pingpong -c 64 -s $SIZE -d $DURATION --warmup 1s" ;;
        pingpong512) echo "--mode pingpong -c 512 -s $SIZE -d $DURATION --warmup 1s" ;;
        bulk) echo "--mode bulk -c 1 --bulk-mib $BULK_MIB --deadline 120s" ;;
        mixed) echo "--mode pingpong -c 64 -s $SIZE -d $DURATION --warmup 1s" ;;
        connect) echo "--mode connect -c 8 -s $SIZE -d $DURATION --warmup 1s" ;;
        # The idle connections connect (paced, 64 at a time) during the
        # warm-up; one that is still not connected when the measured time
        # ends counts as never served.
        idle10k) echo "--mode pingpong -c 0 --idle $IDLE --idle-interval $IDLE_INTERVAL -d $DURATION --warmup $IDLE_WARMUP" ;;
        idle10k_pp8) echo "--mode pingpong -c 8 -s $SIZE --idle $IDLE --idle-interval $IDLE_INTERVAL -d $DURATION --warmup $IDLE_WARMUP" ;;
    esac
}

run_one() {
    local round="$1" scenario="$2" name="$3"
    local samples="$OUT/samples.tmp"
    : > "$samples"
    sampler "${PID[$name]}" "$samples" &
    local spid=$!
    EXTRA_PIDS+=("$spid")
    local args extra=""
    read -r -a args <<< "$(scenario_args "$scenario")"
    if [[ $scenario == mixed ]]; then
        # 8 bulk streams far larger than the run, stopped with SIGTERM (which
        # ends a poolload run early, with its report) once the ping-pong run
        # is over; their own deadline bounds them if anything goes wrong.
        local bulk_out="$OUT/bulk.tmp"
        "${ON_LOAD_CPUS[@]}" "$BIN/poolload" --addr "${ADDR[$name]}" --expect "${EXPECT[$name]}" --json -q \
            --mode bulk -c 8 --bulk-mib 1000000 --deadline 60s > "$bulk_out" 2>/dev/null &
        local bpid=$!
        EXTRA_PIDS+=("$bpid")
        sleep 1
        load "$name" "${args[@]}"
        kill -TERM "$bpid" 2>/dev/null || true
        local brc=0
        wait "$bpid" || brc=$?
        local bline
        bline=$(head -n 1 "$bulk_out")
        extra=",\"bulk_exit\":$brc,\"bulk\":${bline:-null}"
    elif [[ $scenario == idle10k_pp8 ]]; then
        # The same 8 ping-pong clients alone first, against the same server,
        # seconds before they run beside the idle ones: the target is a
        # ratio, and the pingpong8 scenario ran many minutes earlier, often
        # in another of a shared machine's fast or slow spells. The table
        # takes the ratio round by round from these pairs.
        local alone_args
        read -r -a alone_args <<< "$(scenario_args pingpong8)"
        load "$name" "${alone_args[@]}"
        extra=",\"alone_exit\":$LOAD_RC,\"alone\":$REPORT"
        load "$name" "${args[@]}"
    else
        load "$name" "${args[@]}"
    fi
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    record "$round" "$scenario" "$name" "$LOAD_RC" "$REPORT" "$samples" "$extra"
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "rustc: $(rustc --version)"
    echo "cpus: $(nproc)"
    echo "pinned (servers/poolload): ${PIN:-no, both on every CPU}"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "command: scripts/compare.sh $ORIG_ARGS"
    echo "settings: rounds=$ROUNDS duration=$DURATION workers=$WORKERS size=$SIZE bulk_mib=$BULK_MIB idle=$IDLE idle_interval=$IDLE_INTERVAL idle_warmup=$IDLE_WARMUP"
    echo "scenarios: $SCENARIOS"
    echo "servers: $SERVER_LIST"
} > "$OUT/meta.txt"

# Scenario by scenario: all rounds of one before the next, each with fresh
# servers, so that no scenario runs in the wake of another (a connect storm
# leaves thousands of sockets in TIME_WAIT and the scheduler's wake-up
# heuristics disturbed for a few seconds). Within a scenario the servers
# are interleaved and their order rotates every round.
for scenario in "${WANTED[@]}"; do
    for name in "${SERVERS[@]}"; do
        start_server "$name" "$scenario"
    done
    for round in $(seq "$ROUNDS"); do
        echo "== $scenario round $round/$ROUNDS" >&2
        for i in "${!SERVERS[@]}"; do
            name=${SERVERS[$(( (i + round - 1) % ${#SERVERS[@]} ))]}
            run_one "$round" "$scenario" "$name"
        done
    done
    # Peak resident memory of each server over this scenario's rounds.
    for name in "${SERVERS[@]}"; do
        pid=${PID[$name]}
        hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        printf '{"scenario":"%s","server":"%s","vmhwm_kib":%d}\n' \
            "$scenario" "$name" "${hwm:-0}" >> "$SERVER_FIGS"
    done
    stop_servers
done
rm -f "$OUT/samples.tmp" "$OUT/bulk.tmp" "$OUT/line.tmp"

python3 scripts/compare_table.py "$OUT" | tee "$OUT/table.md"
echo "== raw results, logs and this table: $OUT" >&2
