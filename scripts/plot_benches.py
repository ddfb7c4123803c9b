#!/usr/bin/env python3
"""Turn criterion's output for poolserver's benches into a plot and tables.

Usage:
    python3 scripts/plot_benches.py [CRITERION_DIR] [--out docs/pool_sizes.png]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else target/criterion
at the repository root. The script reads, for every benchmark criterion ran,
``<id>/new/benchmark.json`` (the id, parameters and throughput) and
``<id>/new/estimates.json`` (the time per iteration, in ns). It uses the same
estimate criterion prints on its ``time:`` line: the slope for linear
sampling, the mean for flat sampling (which pool_sizes uses), with the 95%
confidence interval.

It writes ``docs/pool_sizes.png`` (round trips per second against the pool
size, one line per number of concurrent connections: solid for connection
dispatch, group ``pool_sizes``; dashed for event dispatch, group
``pool_sizes_event``) and prints markdown tables for both groups and for
``transform`` to standard output, ready to paste into docs/benchmarks.md.

Needs matplotlib (``pip install matplotlib``) for the plot only; without it
the tables are still printed.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_criterion_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    return Path(target) / "criterion" if target else REPO / "target" / "criterion"


def load(criterion_dir):
    """Every benchmark under criterion_dir: a list of dicts with the group,
    function and value ids, the throughput kind and amount per iteration,
    and the time per iteration (estimate, low, high) in ns."""
    results = []
    for bench_json in sorted(criterion_dir.glob("**/new/benchmark.json")):
        est_json = bench_json.with_name("estimates.json")
        if not est_json.exists():
            continue
        bench = json.loads(bench_json.read_text())
        est = json.loads(est_json.read_text())
        # Criterion's headline estimate: slope when it has one (linear
        # sampling), else the mean (flat sampling).
        stat = est.get("slope") or est["mean"]
        ci = stat["confidence_interval"]
        kind, amount = None, None
        if bench.get("throughput"):
            ((kind, amount),) = bench["throughput"].items()
        results.append(
            {
                "group": bench["group_id"],
                "function": bench.get("function_id"),
                "value": bench.get("value_str"),
                "kind": kind,
                "amount": amount,
                "ns": stat["point_estimate"],
                "ns_low": ci["lower_bound"],
                "ns_high": ci["upper_bound"],
            }
        )
    return results


def number(text, key):
    """The integer after `key=` in a criterion id such as `workers=8`."""
    m = re.search(rf"{key}=(\d+)", text or "")
    return int(m.group(1)) if m else None


def per_second(amount, ns):
    return amount / (ns * 1e-9)


def human(x):
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def pool_table(results, group="pool_sizes"):
    """{conns: {workers: (rate, rate_low, rate_high)}} for one group."""
    table = {}
    for r in results:
        if r["group"] != group or r["kind"] != "Elements":
            continue
        conns, workers = number(r["function"], "conns"), number(r["value"], "workers")
        if conns is None or workers is None:
            continue
        # A longer time is a lower rate, so the bounds swap.
        table.setdefault(conns, {})[workers] = (
            per_second(r["amount"], r["ns"]),
            per_second(r["amount"], r["ns_high"]),
            per_second(r["amount"], r["ns_low"]),
        )
    return table


def print_pool_markdown(table, group="pool_sizes"):
    if not table:
        print(f"(no {group} results found)\n")
        return
    conns = sorted(table)
    workers = sorted({w for row in table.values() for w in row})
    mode = "event dispatch" if group.endswith("event") else "connection dispatch"
    print(f"`{group}`, {mode}: round trips per second (64-byte messages; "
          "criterion estimate, 95% CI in brackets):\n")
    print("| workers | " + " | ".join(f"{c} conn{'s' if c > 1 else ''}" for c in conns) + " |")
    print("|---:|" + "---:|" * len(conns))
    for w in workers:
        cells = []
        for c in conns:
            if w in table[c]:
                rate, lo, hi = table[c][w]
                cells.append(f"{human(rate)} [{human(lo)}–{human(hi)}]")
            else:
                cells.append("–")
        print(f"| {w} | " + " | ".join(cells) + " |")
    print()
    for c in conns:
        best = max(table[c], key=lambda w: table[c][w][0])
        print(f"- {c} connection{'s' if c > 1 else ''}: best at {best} workers "
              f"({human(table[c][best][0])} rt/s)")
    print()


def print_bytes_markdown(results):
    rows = [r for r in results if r["kind"] == "Bytes"]
    if not rows:
        return
    print("| benchmark | time per iteration | throughput |")
    print("|---|---:|---:|")
    for r in rows:
        name = "/".join(x for x in (r["group"], r["function"], r["value"]) if x)
        rate = per_second(r["amount"], r["ns"])
        print(f"| {name} | {r['ns'] / 1e3:.0f} µs | {rate / 1e9:.2f} GB/s "
              f"({rate / 2**20:.0f} MiB/s) |")
    print()


def plot(table, out, event_table=None):
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib); no plot written",
              file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    tables = [(table, "-", "o", "")]
    if event_table:
        tables.append((event_table, "--", "s", ", event dispatch"))
    for tab, style, marker, suffix in tables:
        for c in sorted(tab):
            ws = sorted(tab[c])
            rates = [tab[c][w][0] for w in ws]
            low = [tab[c][w][0] - tab[c][w][1] for w in ws]
            high = [tab[c][w][2] - tab[c][w][0] for w in ws]
            ax.errorbar(ws, rates, yerr=[low, high], marker=marker, linestyle=style,
                        capsize=3,
                        label=f"{c} concurrent connection{'s' if c > 1 else ''}{suffix}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({w for _, tab in [(0, table), (0, event_table or {})]
                          for row in tab.values() for w in row}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("workers in the pool")
    ax.set_ylabel("round trips per second (64 B)")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda y, _: human(y)))
    ax.set_title("poolserver: throughput by pool size (benches/pool_sizes.rs)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("criterion_dir", nargs="?", type=Path, default=None,
                    help="criterion's output directory (default: "
                         "$CARGO_TARGET_DIR/criterion or target/criterion)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "pool_sizes.png",
                    help="where to write the plot (default: docs/pool_sizes.png)")
    args = ap.parse_args()
    criterion_dir = args.criterion_dir or default_criterion_dir()
    if not criterion_dir.is_dir():
        sys.exit(f"no criterion output at {criterion_dir}; run `cargo bench` first")
    results = load(criterion_dir)
    if not results:
        sys.exit(f"no benchmark results under {criterion_dir}")

    table = pool_table(results)
    event_table = pool_table(results, "pool_sizes_event")
    print_pool_markdown(table)
    print_pool_markdown(event_table, "pool_sizes_event")
    print_bytes_markdown(results)
    if table or event_table:
        plot(table, args.out, event_table)


if __name__ == "__main__":
    main()
