#!/usr/bin/env python3
"""Plot a soak run: the server's RSS and open file descriptors over time.

    python3 scripts/plot_soak.py docs/soak.csv docs/soak.png

Reads the CSV written by scripts/soak.sh (columns seconds, rss_kib, fds and
optionally threads, accepted, closed, rejected, live) and writes a
two-panel PNG: RSS in MiB on top, open fds below (with the thread count,
when present, for scale). Connections accepted so far, if recorded, are
drawn on a second axis of the top panel so a leak per connection would
show as RSS rising with them. Needs matplotlib (pip install matplotlib).
"""

import csv
import sys


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"plot_soak: {path} has no samples")

    def column(name, scale=1.0):
        if name not in rows[0]:
            return None
        values = []
        for row in rows:
            cell = (row.get(name) or "").strip()
            values.append(float(cell) * scale if cell else None)
        return values if any(v is not None for v in values) else None

    return {
        "t": [float(r["seconds"]) / 60.0 for r in rows],
        "rss": column("rss_kib", 1 / 1024),
        "fds": column("fds"),
        "threads": column("threads"),
        "accepted": column("accepted"),
    }


def stats(values):
    vs = [v for v in values if v is not None]
    return min(vs), max(vs), vs[-1]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_soak.py SOAK.csv OUT.png")
    src, dst = sys.argv[1], sys.argv[2]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_soak: matplotlib is missing (pip install matplotlib)")

    d = load(src)
    fig, (ax_rss, ax_fds) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5))

    lo, hi, last = stats(d["rss"])
    ax_rss.plot(d["t"], d["rss"], color="tab:blue", marker=".", markersize=3, label="RSS")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_ylim(0, max(hi * 1.3, 1))
    ax_rss.set_title(f"poolserver soak: RSS min {lo:.1f} / max {hi:.1f} / last {last:.1f} MiB")
    ax_rss.grid(True, alpha=0.3)
    if d["accepted"]:
        ax_acc = ax_rss.twinx()
        pts = [(t, a) for t, a in zip(d["t"], d["accepted"]) if a is not None]
        ax_acc.plot(
            [p[0] for p in pts],
            [p[1] / 1000 for p in pts],
            color="tab:gray",
            linestyle="--",
            linewidth=1,
            label="connections accepted",
        )
        ax_acc.set_ylabel("connections accepted (thousands)", color="tab:gray")
        ax_acc.tick_params(axis="y", colors="tab:gray")
        ax_acc.set_ylim(bottom=0)
        lines = ax_rss.get_lines() + ax_acc.get_lines()
        ax_rss.legend(lines, [l.get_label() for l in lines], loc="lower right")

    lo, hi, last = stats(d["fds"])
    ax_fds.plot(d["t"], d["fds"], color="tab:orange", marker=".", markersize=3, label="open fds")
    if d["threads"]:
        ax_fds.plot(d["t"], d["threads"], color="tab:green", linewidth=1, label="threads")
    ax_fds.set_ylabel("count")
    ax_fds.set_ylim(0, max(hi * 1.45, 1))
    ax_fds.set_title(f"open file descriptors: min {lo:.0f} / max {hi:.0f} / last {last:.0f}")
    ax_fds.set_xlabel("minutes since start")
    ax_fds.grid(True, alpha=0.3)
    ax_fds.legend(loc="upper left", ncol=2)

    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"plot_soak: wrote {dst}")


if __name__ == "__main__":
    main()
