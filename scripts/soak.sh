#!/usr/bin/env bash
# Soak test: run the release server under a bounded mixed load for MINUTES
# (default 10) and record its memory and file descriptors over time.
#
#   scripts/soak.sh [MINUTES]
#   python3 scripts/plot_soak.py docs/soak.csv docs/soak.png
#
# The server runs with 8 workers and an accept queue of 256, a 2 s idle
# timeout and warnings only. Against 127.0.0.1 only, until the end time:
#
#   * poolload --mode pingpong -c 16 -d 20s      in a loop, 10 s apart
#   * poolload --mode bulk -c 2 --bulk-mib 64    in a loop, 2 s apart
#   * poolload --mode connect -c 8 -d 20s        in a loop
#
#   A pingpong run's 16 connections hold all 8 workers for its 20 s (the
#   other 8 wait in the queue, and are reported never_served), so everything
#   else queues behind it; the 10 s pauses between pingpong runs are when
#   connect mode churns through connections by the ten thousand, which is
#   what a per-connection leak of memory or fds would show up under.
#   * every 10 s, 3 connections that connect and go silent (the server must
#     close them: idle timeout, once a worker takes them) and 3 poolclient
#     conversations that end with `quit` (the reply must be right)
#
# Every loop stops at the end time and after a fixed number of rounds.
# Every 5 s the server's VmRSS, open fds and threads, and the counters of
# its latest monitor report, go to docs/soak.csv (SOAK_CSV to change):
#
#   seconds,rss_kib,fds,threads,accepted,closed,rejected,live
#
# At the end: a last sample after the load has stopped, SIGTERM, and the
# server must exit 0 within 30 s. Any poolload run that exits non-zero, a
# silent connection the server does not close, or a wrong `quit`
# conversation is reported, and the script then exits 1.
#
# Logs and every run's JSON report are kept in SOAK_LOG_DIR (default
# target/soak/). Binaries come from ${CARGO_TARGET_DIR:-target}/release,
# built first with `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
    echo "usage: scripts/soak.sh [MINUTES]   (a whole number >= 1, default 10)" >&2
    exit 2
fi
csv="${SOAK_CSV:-docs/soak.csv}"
logdir="${SOAK_LOG_DIR:-target/soak}"
sample_every=5

echo "soak: building release binaries"
cargo build --release --bins --quiet
bindir="${CARGO_TARGET_DIR:-target}/release"
for b in poolserver poolload poolclient; do
    [ -x "$bindir/$b" ] || { echo "soak: $bindir/$b missing after build" >&2; exit 1; }
done

rm -rf "$logdir"
mkdir -p "$logdir" "$(dirname "$csv")"
touch "$logdir/runs.tsv" "$logdir/clients.tsv"

# ---------------------------------------------------------------- server --
# --monitor-format json puts the monitor reports on stdout (one JSON object
# per line) whatever the log level, which is where the accepted/closed
# columns come from; the log (stderr) keeps only warnings.
"$bindir/poolserver" --addr 127.0.0.1:0 --workers 8 --backlog 256 \
    --monitor-interval 5s --idle-timeout 2s --log-level warn \
    --monitor-format json \
    >"$logdir/monitor.jsonl" 2>"$logdir/server.err" &
server_pid=$!

loop_pids=()
cleanup() {
    local pid
    for pid in "${loop_pids[@]}"; do
        kill -- "$pid" 2>/dev/null || true
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

# The address the server really listens on. The "listening on ADDR" line is
# logged at info level, so with --log-level warn it is not on stderr; then
# the port is read from the kernel: the LISTEN entry of /proc/PID/net/tcp
# whose socket inode is one of the server's own fds.
listen_addr() {
    local addr inodes hex
    addr="$(grep -o 'listening on [^ ]*' "$logdir/server.err" 2>/dev/null | head -n1 | cut -d' ' -f3)"
    if [ -n "$addr" ]; then
        echo "$addr"
        return 0
    fi
    inodes="$(for f in /proc/"$server_pid"/fd/*; do readlink "$f"; done 2>/dev/null |
        sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p' | tr '\n' ' ')"
    [ -n "$inodes" ] || return 1
    hex="$(awk -v inodes="$inodes" '
        BEGIN { n = split(inodes, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
        NR > 1 && $4 == "0A" && ($10 in want) { print $2; exit }' /proc/"$server_pid"/net/tcp)"
    [ -n "$hex" ] || return 1
    echo "127.0.0.1:$((16#${hex#*:}))"
}

addr=""
for _ in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "soak: the server exited at start:" >&2
        cat "$logdir/server.err" >&2
        exit 1
    fi
    addr="$(listen_addr || true)"
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "soak: could not find the server's address" >&2; exit 1; }
port="${addr##*:}"

start=$(date +%s)
end=$((start + minutes * 60))
echo "soak: server pid $server_pid on $addr; load for $minutes min (until $(date -d "@$end" +%T)); logs in $logdir"

now() { date +%s; }
remaining() { echo $((end - $(now))); }

# One poolload run: its JSON report goes to MODE.jsonl, its stderr is kept
# only if it failed, and "mode run rc start_s end_s" goes to runs.tsv.
poolload_run() {
    local mode=$1 n=$2 t0 rc=0
    shift 2
    t0=$(($(now) - start))
    "$bindir/poolload" --addr "$addr" --mode "$mode" --json --quiet "$@" \
        >>"$logdir/$mode.jsonl" 2>"$logdir/$mode-$n.err" || rc=$?
    [ "$rc" -eq 0 ] && rm -f "$logdir/$mode-$n.err"
    printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$rc" "$t0" $(($(now) - start)) >>"$logdir/runs.tsv"
}

# Timed modes: a run of min(20 s, time left), while at least 3 s are left,
# then PAUSE seconds of rest.
timed_loop() {
    local mode=$1 pause=$2 n=0 left d
    shift 2
    while [ "$n" -lt $((minutes * 3 + 2)) ]; do
        left=$(remaining)
        [ "$left" -ge 3 ] || break
        d=$((left < 20 ? left : 20))
        n=$((n + 1))
        poolload_run "$mode" "$n" -d "${d}s" "$@"
        sleep "$pause"
    done
}

# Bulk: 2 x 64 MiB per run, 2 s apart, while at least 30 s are left. The
# deadline allows for waiting up to a whole pingpong run in the queue.
bulk_loop() {
    local n=0
    while [ "$n" -lt $((minutes * 30)) ] && [ "$(remaining)" -ge 30 ]; do
        n=$((n + 1))
        poolload_run bulk "$n" -c 2 --bulk-mib 64 --deadline 90s
        sleep 2
    done
}

# A connection that says nothing: the server must close it (idle timeout
# once a worker takes it; queue waits can reach a whole pingpong run, so
# allow 60 s). Appends "silent N closed|open" to clients.tsv.
silent_client() {
    local n=$1 rc=0
    timeout 60 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && cat <&3 >/dev/null' _ "$port" || rc=$?
    if [ "$rc" -eq 0 ]; then
        printf 'silent\t%s\tclosed\n' "$n" >>"$logdir/clients.tsv"
    else
        printf 'silent\t%s\tFAILED(rc=%s)\n' "$n" "$rc" >>"$logdir/clients.tsv"
    fi
}

# A poolclient conversation ending with `quit`: must print exactly HELLO N
# and exit 0.
quit_client() {
    local n=$1 out rc=0
    out="$(printf 'hello %s\nquit\nnever answered\n' "$n" |
        timeout 60 "$bindir/poolclient" --addr "$addr" 2>>"$logdir/quit.err")" || rc=$?
    if [ "$rc" -eq 0 ] && [ "$out" = "HELLO $n" ]; then
        printf 'quit\t%s\tok\n' "$n" >>"$logdir/clients.tsv"
    else
        printf 'quit\t%s\tFAILED(rc=%s,out=%q)\n' "$n" "$rc" "$out" >>"$logdir/clients.tsv"
    fi
}

clients_loop() {
    local round=0 i pids
    while [ "$round" -lt $((minutes * 6)) ] && [ "$(remaining)" -ge 10 ]; do
        round=$((round + 1))
        pids=()
        for i in 1 2 3; do
            silent_client "$round.$i" &
            pids+=($!)
            quit_client "$round.$i" &
            pids+=($!)
        done
        sleep 10
        # Each client is bounded by its own 60 s timeout; reap finished ones.
        for i in "${pids[@]}"; do
            if ! kill -0 "$i" 2>/dev/null; then wait "$i" 2>/dev/null || true; fi
        done
    done
    wait
}

# Appends one CSV row: seconds since start and the server's numbers now;
# the counters come from its latest monitor report (at most 5 s old).
sample() {
    local t rss fds threads last accepted closed rejected live
    t=$(($(now) - start))
    rss="$(awk '/^VmRSS:/ { print $2 }' /proc/"$server_pid"/status 2>/dev/null || true)"
    threads="$(awk '/^Threads:/ { print $2 }' /proc/"$server_pid"/status 2>/dev/null || true)"
    fds="$(ls /proc/"$server_pid"/fd 2>/dev/null | wc -l || true)"
    last="$(tail -n1 "$logdir/monitor.jsonl" 2>/dev/null || true)"
    field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<<"$last"; }
    accepted="$(field accepted)"
    closed="$(field closed)"
    rejected="$(field rejected)"
    live="$(field live)"
    [ -n "$rss" ] || return 0
    echo "$t,$rss,$fds,$threads,$accepted,$closed,$rejected,$live" >>"$csv"
}

echo "seconds,rss_kib,fds,threads,accepted,closed,rejected,live" >"$csv"
sample

timed_loop pingpong 10 -c 16 &
loop_pids+=($!)
bulk_loop &
loop_pids+=($!)
timed_loop connect 0 -c 8 &
loop_pids+=($!)
clients_loop &
loop_pids+=($!)

# Sample until the end time, then until every loop has finished.
next=$((start + sample_every))
while :; do
    busy=0
    for pid in "${loop_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && busy=1
    done
    [ "$busy" -eq 1 ] || [ "$(now)" -lt "$end" ] || break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "soak: the server died during the run" >&2
        break
    fi
    sleep $((next > $(now) ? next - $(now) : 0))
    sample
    next=$((next + sample_every))
done
for pid in "${loop_pids[@]}"; do wait "$pid" || true; done
loop_pids=()

# Let the last lingering closes and idle timeouts finish, then one more
# monitor report lands: the server should be back to idle (live=0).
sleep $((sample_every + 2))
sample

# ------------------------------------------------------------- shutdown --
server_rc=0
if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    for _ in $(seq 300); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "soak: the server did not exit within 30 s of SIGTERM; killing it" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
fi
wait "$server_pid" || server_rc=$?

# -------------------------------------------------------------- summary --
failed=0
echo
echo "soak: summary ($minutes min, server $addr)"
awk -F, 'NR == 2 { rmin = rmax = $2; fmin = fmax = $3; tmin = tmax = $4 }
    NR >= 2 {
        if ($2 < rmin) rmin = $2; if ($2 > rmax) rmax = $2
        if ($3 < fmin) fmin = $3; if ($3 > fmax) fmax = $3
        if ($4 < tmin) tmin = $4; if ($4 > tmax) tmax = $4
        r = $2; f = $3; th = $4; acc = $5; cl = $6; rej = $7; live = $8; n++
    }
    END {
        printf "  samples   %d (every %ss)\n", n, '"$sample_every"'
        printf "  RSS       min %.1f MiB, max %.1f MiB, last %.1f MiB\n", rmin / 1024, rmax / 1024, r / 1024
        printf "  open fds  min %d, max %d, last %d\n", fmin, fmax, f
        printf "  threads   min %d, max %d, last %d\n", tmin, tmax, th
        printf "  server    accepted %s, closed %s, rejected %s, live %s (last monitor report)\n", acc, cl, rej, live
    }' "$csv"

runs=$(wc -l <"$logdir/runs.tsv")
bad_runs=$(awk -F'\t' '$3 != 0' "$logdir/runs.tsv" | wc -l)
echo "  poolload  $runs runs, $bad_runs failed"
for mode in pingpong bulk connect; do
    [ -s "$logdir/$mode.jsonl" ] || continue
    awk -v mode="$mode" '
        function num(key,   m) { return match($0, "\"" key "\":[0-9]+") ? substr($0, RSTART + length(key) + 3, RLENGTH - length(key) - 3) + 0 : 0 }
        { n++; rt += num("round_trips"); wrong += num("wrong_replies"); err += num("errors"); ns += num("never_served") }
        END { printf "    %-9s %3d runs: round_trips %d, wrong_replies %d, errors %d, never_served %d\n", mode, n, rt, wrong, err, ns }' \
        "$logdir/$mode.jsonl"
done
if [ "$bad_runs" -gt 0 ]; then
    failed=1
    echo "  FAILED poolload runs (mode, run, exit code, start s, end s; stderr in $logdir/MODE-RUN.err):"
    awk -F'\t' '$3 != 0 { print "    " $0 }' "$logdir/runs.tsv"
fi

silent_ok=$(grep -c $'^silent\t.*\tclosed$' "$logdir/clients.tsv" || true)
silent_all=$(grep -c $'^silent\t' "$logdir/clients.tsv" || true)
quit_ok=$(grep -c $'^quit\t.*\tok$' "$logdir/clients.tsv" || true)
quit_all=$(grep -c $'^quit\t' "$logdir/clients.tsv" || true)
echo "  silent    $silent_ok of $silent_all closed by the server"
echo "  quit      $quit_ok of $quit_all conversations right"
if [ "$silent_ok" -ne "$silent_all" ] || [ "$quit_ok" -ne "$quit_all" ]; then
    failed=1
    grep 'FAILED' "$logdir/clients.tsv" | sed 's/^/    /'
fi

warnings=$(grep -c 'WARN' "$logdir/server.err" || true)
errors=$(grep -c 'ERROR' "$logdir/server.err" || true)
echo "  log       $warnings warnings, $errors errors ($logdir/server.err)"
if [ "$errors" -gt 0 ]; then
    grep 'ERROR' "$logdir/server.err" | head -n5 | sed 's/^/    /'
fi

if [ "$server_rc" -eq 0 ]; then
    echo "  shutdown  SIGTERM -> exit 0"
else
    failed=1
    echo "  shutdown  FAILED: SIGTERM -> exit $server_rc"
fi
echo "  csv       $csv (plot: python3 scripts/plot_soak.py $csv docs/soak.png)"
exit "$failed"
