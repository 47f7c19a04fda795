#!/usr/bin/env python3
"""Draws the capacity curve from the JSON files `edgesync-local --steps --out` writes.

    plot_capacity.py OUT.png capacity-apache.json [capacity-tansu.json ...]

Left: delivered against offered events/s (the diagonal is "delivered all"); middle: p50 and
p99 latency of each step's events, append -> event read from edgesync.events; right: the
machine's busy cores during each step, the pipeline's own (every process of the run, the load
generator included) and everything else's (other users of a shared machine). One colour per
broker; a filled marker is a sustainable step, a hollow one is not; the dotted line is the
sustainable rate. Files that do not exist are skipped (a broker not run yet).
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, paths = sys.argv[1], [p for p in sys.argv[2:] if os.path.exists(p)]
    runs = [json.load(open(p)) for p in paths]
    if not runs:
        sys.exit("no capacity results to draw")
    fig, (rate, lat, cpu) = plt.subplots(1, 3, figsize=(17, 4.8))
    top = max(s["offered_events_per_s"] for r in runs for s in r["steps"])
    rate.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="delivered = offered")
    for i, r in enumerate(runs):
        c = COLOURS[i % len(COLOURS)]
        steps = r["steps"]
        x = [s["offered_events_per_s"] for s in steps]
        ok = [s["sustainable"] for s in steps]
        name = r["broker"]
        delivered = [s["delivered_events_per_s"] for s in steps]
        p50 = [s["append_to_event_ms"]["p50"] for s in steps]
        p99 = [s["append_to_event_ms"]["p99"] for s in steps]
        rate.plot(x, delivered, color=c, lw=1.2, label=name)
        lat.plot(x, p50, color=c, lw=1.2, label=f"{name}: p50")
        lat.plot(x, p99, color=c, lw=1.2, ls="--", label=f"{name}: p99")
        ours = [sum(p["cores"] for p in s["cpu_cores"]["processes"]) for s in steps]
        busy = [s["cpu_cores"]["machine_busy"] for s in steps]
        cpu.plot(x, ours, color=c, lw=1.2, label=f"{name}: the pipeline")
        cpu.plot(x, busy, color=c, lw=1.2, ls=":", label=f"{name}: the machine (all processes)")
        for ax, ys in [(rate, delivered), (lat, p50), (lat, p99), (cpu, ours)]:
            for xi, yi, good in zip(x, ys, ok):
                ax.plot([xi], [yi], marker="o", ms=5, color=c, mfc=c if good else "white")
        best = r.get("sustainable_events_per_s")
        if best:
            for ax in (rate, lat, cpu):
                ax.axvline(best, color=c, ls=":", lw=1)
            rate.annotate(
                f"sustainable {best / 1000:.0f}k/s",
                (best, best),
                textcoords="offset points",
                xytext=(6, -14),
                color=c,
                fontsize=8,
            )
    for ax in (rate, lat, cpu):
        ax.set_xscale("log")
        ax.set_xlabel("offered events/s (10 agents, links up)")
        ax.grid(True, which="both", lw=0.3)
    rate.set_yscale("log")
    rate.set_ylabel("delivered to edgesync.events, events/s")
    rate.set_title("throughput")
    lat.set_yscale("log")
    lat.set_ylabel("append → event read, ms")
    lat.set_title("latency of each step's events")
    cores = max(r.get("machine", {}).get("cores", 2) for r in runs)
    cpu.set_ylim(0, cores * 1.05)
    cpu.set_ylabel("busy cores")
    cpu.set_title("CPU during each step")
    cpu.legend(fontsize=8, loc="lower right")
    rate.legend(fontsize=8, loc="upper left")
    lat.legend(fontsize=8, loc="upper left")
    r0 = runs[0]
    machine = r0.get("machine", {})
    fig.suptitle(
        f"edgesync capacity, one machine ({machine.get('cores', '?')} cores, "
        f"{machine.get('cpu', '')}), {r0.get('step_seconds', '?')} s per step — "
        + ", ".join(f"{r['broker']} {r.get('date', '')}" for r in runs),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out} from {', '.join(paths)}")


if __name__ == "__main__":
    main()
