#!/usr/bin/env python3
"""Tables from a scripts/compare.sh run: medians over the rounds, ratios to
the baselines and to connection mode, and the targets of issue 8 (event
dispatch) checked against them.

Usage: scripts/compare_table.py OUT_DIR      (the directory compare.sh wrote)

Reads OUT_DIR/results.jsonl (one poolload report per run), servers.jsonl
(peak RSS of each server per scenario) and meta.txt; prints markdown.
"""
import json
import statistics
import sys

out = sys.argv[1]
runs = [json.loads(line) for line in open(f"{out}/results.jsonl") if line.strip()]
peaks = {(r["scenario"], r["server"]): r["vmhwm_kib"]
         for r in (json.loads(line) for line in open(f"{out}/servers.jsonl") if line.strip())}
meta = open(f"{out}/meta.txt").read().rstrip()
settings = dict(kv.split("=", 1) for line in meta.splitlines()
                if line.startswith("settings:") for kv in line.split()[1:])
workers = int(settings.get("workers", "8"))

servers = []
for r in runs:
    if r["server"] not in servers:
        servers.append(r["server"])
LABEL = {
    "poolserver": "poolserver, connection mode",
    "poolserver_event": "poolserver `--dispatch event`",
    "poolserver_echo": "poolserver `--service echo`",
    "thread_per_conn": "thread per connection",
    "tokio_per_conn": "tokio task per connection",
}
TPC, TOKIO, CONN, EVENT = "thread_per_conn", "tokio_per_conn", "poolserver", "poolserver_event"


def reports(server, scenario):
    return [r for r in runs if r["server"] == server and r["scenario"] == scenario
            and r["report"] is not None]


def med(server, scenario, f):
    vals = [f(r) for r in reports(server, scenario)]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def rep(key):
    return lambda r: r["report"][key]


def worst(server, scenario, f):
    vals = [f(r) for r in reports(server, scenario)]
    return max(vals) if vals else None


def fairness(r):
    rep_ = r["report"]
    return rep_["fewest_rt"] / rep_["most_rt"] if rep_["most_rt"] else 0.0


def failed(rep_, exit_code):
    """A run with a wrong reply, an error, a cut deadline or a bad exit."""
    return rep_ is None or exit_code != 0 or rep_["wrong_replies"] or rep_["errors"] \
        or rep_.get("idle_wrong", 0) or rep_.get("idle_errors", 0) or rep_["cut_by_deadline"]


def problems(server, scenario):
    """Failed runs (idle10k_pp8: a round fails if either of its runs did)."""
    bad = 0
    for r in runs:
        if r["server"] != server or r["scenario"] != scenario:
            continue
        if failed(r["report"], r["exit"]) or ("alone" in r and failed(r["alone"], r.get("alone_exit", 0))):
            bad += 1
    return bad


def alone_rate(r):
    """idle10k_pp8: the ping-pong rate of the run alone just before."""
    return r["alone"]["rt_per_sec"] if r.get("alone") else None


def paired(server):
    """idle10k_pp8: the median over the rounds of the ping-pong rate beside
    the idle connections over the rate alone just before (None for a run
    made before compare.sh measured the pairs)."""
    ratios = [r["report"]["rt_per_sec"] / r["alone"]["rt_per_sec"]
              for r in reports(server, "idle10k_pp8")
              if r.get("alone") and r["alone"]["rt_per_sec"]]
    return statistics.median(ratios) if ratios else None


def n_rounds(scenario):
    rs = {r["round"] for r in runs if r["scenario"] == scenario}
    return len(rs)


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def present(scenario):
    return any(r["scenario"] == scenario for r in runs)


print("```text")
print(meta)
print("```\n")

for scenario, conns in (("pingpong8", 8), ("pingpong64", 64), ("pingpong512", 512)):
    if not present(scenario):
        continue
    print(f"**Ping-pong, {conns} connections** (64-byte messages; median of {n_rounds(scenario)} rounds)\n")
    rows = []
    for s in servers:
        v = med(s, scenario, rep("rt_per_sec"))
        rows.append([LABEL.get(s, s), fmt(v), fmt(med(s, scenario, rep("p50_us"))),
                     fmt(med(s, scenario, rep("p99_us"))), f"{med(s, scenario, fairness):.2f}",
                     fmt(worst(s, scenario, rep("never_served"))),
                     ratio(v, med(TPC, scenario, rep("rt_per_sec"))),
                     ratio(v, med(CONN, scenario, rep("rt_per_sec"))), problems(s, scenario)])
    table(["server", "round trips/s", "p50 µs", "p99 µs", "fewest/most", "never served (worst round)",
           "vs thread/conn", "vs connection mode", "failed runs"], rows)

if present("bulk"):
    print(f"**Bulk, 1 connection × {settings.get('bulk_mib', '?')} MiB** (median of {n_rounds('bulk')} rounds)\n")
    rows = []
    for s in servers:
        v = med(s, "bulk", rep("mb_per_sec"))
        rows.append([LABEL.get(s, s), fmt(v, 1), ratio(v, med(TPC, "bulk", rep("mb_per_sec"))),
                     ratio(v, med(CONN, "bulk", rep("mb_per_sec"))), problems(s, "bulk")])
    table(["server", "MB/s", "vs thread/conn", "vs connection mode", "failed runs"], rows)

if present("mixed"):
    print("**8 bulk streams + 64 ping-pong connections at once** (median of "
          f"{n_rounds('mixed')} rounds)\n")
    rows = []
    for s in servers:
        bulk = med(s, "mixed", lambda r: r["bulk"]["mb_per_sec"] if r.get("bulk") else None)
        rows.append([LABEL.get(s, s), fmt(med(s, "mixed", rep("rt_per_sec"))),
                     fmt(med(s, "mixed", rep("p50_us"))), fmt(med(s, "mixed", rep("p99_us"))),
                     fmt(worst(s, "mixed", rep("never_served"))), fmt(bulk, 1),
                     problems(s, "mixed")])
    table(["server", "ping-pong round trips/s", "ping-pong p50 µs", "ping-pong p99 µs",
           "ping-pong never served (worst round)", "bulk MB/s (8 streams)", "failed runs"], rows)

if present("connect"):
    print(f"**Connect** (8 loops of connect, 1 round trip, quit; median of {n_rounds('connect')} rounds)\n")
    rows = []
    for s in servers:
        v = med(s, "connect", rep("connects_per_sec"))
        rows.append([LABEL.get(s, s), fmt(v), fmt(med(s, "connect", rep("p50_us"))),
                     fmt(med(s, "connect", rep("p99_us"))),
                     ratio(v, med(TPC, "connect", rep("connects_per_sec"))),
                     ratio(v, med(CONN, "connect", rep("connects_per_sec"))), problems(s, "connect")])
    table(["server", "connections/s", "p50 µs", "p99 µs", "vs thread/conn", "vs connection mode",
           "failed runs"], rows)

for scenario, title in (("idle10k", "alone"), ("idle10k_pp8", "beside 8 ping-pong connections")):
    if not present(scenario):
        continue
    idle = settings.get("idle", "?")
    print(f"**{int(idle):,} mostly idle connections** (a 16-byte line every "
          f"{settings.get('idle_interval', '?')} each), {title}; median of {n_rounds(scenario)} rounds, "
          f"server peak RSS over all rounds\n")
    rows = []
    for s in servers:
        row = [LABEL.get(s, s), fmt(med(s, scenario, rep("idle_served"))),
               fmt(med(s, scenario, rep("idle_never_served"))),
               fmt(med(s, scenario, rep("idle_not_connected"))),
               fmt(med(s, scenario, lambda r: r["report"]["idle_errors"] + r["report"]["idle_rejected"])),
               fmt(med(s, scenario, rep("idle_p50_us"))), fmt(med(s, scenario, rep("idle_p99_us"))),
               mib(peaks.get((scenario, s))), fmt(worst(s, scenario, lambda r: r["threads_max"]))]
        if scenario == "idle10k_pp8":
            v = med(s, scenario, rep("rt_per_sec"))
            alone = med(s, scenario, alone_rate)
            pr = paired(s)
            row += [fmt(v), fmt(med(s, scenario, rep("p99_us"))), fmt(alone),
                    "–" if pr is None else f"{pr:.2f}×",
                    ratio(v, med(s, "pingpong8", rep("rt_per_sec")))]
        row.append(problems(s, scenario))
        rows.append(row)
    head = ["server", "idle served", "never served", "of which not connected", "errors + BUSY",
            "reply p50 µs", "reply p99 µs", "peak RSS (VmHWM)", "threads (most seen)"]
    if scenario == "idle10k_pp8":
        head += ["8 ping-pong: round trips/s", "p99 µs", "alone just before", "vs alone (per round)",
                 "vs pingpong8 scenario"]
    table(head + ["failed runs"], rows)

# The targets of issue 8, for event mode.
checks = []


def check(what, measured, ok):
    checks.append([what, measured, "met" if ok else "**missed**"])


for scenario in ("pingpong512", "pingpong64"):
    if not (present(scenario) and reports(EVENT, scenario)):
        continue
    ev = med(EVENT, scenario, rep("rt_per_sec"))
    tpc = med(TPC, scenario, rep("rt_per_sec"))
    ns = worst(EVENT, scenario, rep("never_served"))
    check(f"{scenario}: never served 0", f"{ns} (worst round)", ns == 0)
    if tpc:
        check(f"{scenario}: round trips/s ≥ 1.0× thread/conn",
              f"{ev / tpc:.2f}× ({ev:,.0f} vs {tpc:,.0f})", ev >= tpc)
        p_ev, p_tpc = med(EVENT, scenario, rep("p99_us")), med(TPC, scenario, rep("p99_us"))
        check(f"{scenario}: p99 ≤ thread/conn's", f"{p_ev:,.0f} µs vs {p_tpc:,.0f} µs", p_ev <= p_tpc)
    fair = med(EVENT, scenario, fairness)
    check(f"{scenario}: fewest/most round trips ≥ 0.5", f"{fair:.2f}", fair >= 0.5)
for scenario, key, what in (("pingpong8", "rt_per_sec", "round trips/s"), ("bulk", "mb_per_sec", "MB/s"),
                            ("connect", "connects_per_sec", "connections/s")):
    if present(scenario) and reports(EVENT, scenario) and reports(CONN, scenario):
        ev, cn = med(EVENT, scenario, rep(key)), med(CONN, scenario, rep(key))
        d = 1 if scenario == "bulk" else 0
        check(f"{scenario}: {what} ≥ 0.95× connection mode", f"{ev / cn:.2f}× ({ev:,.{d}f} vs {cn:,.{d}f})",
              ev >= 0.95 * cn)
if present("idle10k") and reports(EVENT, "idle10k"):
    ns = worst(EVENT, "idle10k", rep("idle_never_served"))
    check("idle10k: all served", f"never served {ns} (worst round)", ns == 0)
    hwm = peaks.get(("idle10k", EVENT))
    check("idle10k: server RSS ≤ 32 MiB", mib(hwm), hwm is not None and hwm <= 32 * 1024)
    th = worst(EVENT, "idle10k", lambda r: r["threads_max"])
    check("idle10k: threads = workers + a few (≤ workers + 8)", f"{th} ({workers} workers)",
          th <= workers + 8)
    checks.append(["idle10k: reply p99", f"{med(EVENT, 'idle10k', rep('idle_p99_us')):,.0f} µs", "reported"])
if present("idle10k_pp8") and reports(EVENT, "idle10k_pp8"):
    # Round by round against the same clients alone just before (see
    # compare.sh); a run without those pairs falls back to the pingpong8
    # scenario, measured minutes apart.
    beside = med(EVENT, "idle10k_pp8", rep("rt_per_sec"))
    pr = paired(EVENT)
    if pr is not None:
        alone = med(EVENT, "idle10k_pp8", alone_rate)
        check("8 ping-pong beside the idle ones ≥ 0.9× without them",
              f"{pr:.2f}× (median of the rounds' ratios; medians {beside:,.0f} vs {alone:,.0f})", pr >= 0.9)
    elif present("pingpong8"):
        alone = med(EVENT, "pingpong8", rep("rt_per_sec"))
        check("8 ping-pong beside the idle ones ≥ 0.9× without them",
              f"{beside / alone:.2f}× ({beside:,.0f} vs {alone:,.0f}, the pingpong8 scenario)",
              beside >= 0.9 * alone)
if checks:
    print("**Targets of issue 8 (event mode)**\n")
    table(["target", "measured", ""], checks)
