#!/usr/bin/env python3
"""The sizing model: what a fleet needs, from measured costs.

    sizing.py docs/capacity-apache.json --batch-us bridge=B,mosquitto=M,kafka=K
              [--kafka-event-us E] [--devices 100000] [--rate 10] [--events-per-batch 1]
              [--node-cores 8] [--utilisation 0.6] [--replication 3]

Each component's cost is split in two:

- **per event**, from a capacity run (`edgesync-local --steps --out`, scripts/bench-capacity):
  it feeds a fixed number of batches a second (each agent takes ten requests a second and
  sends each as a batch) at a rising event rate, so across its sustainable steps a component's
  CPU is a straight line in the event rate; its slope (least squares) is what one more event
  costs. The line at zero events is the run's fixed costs (idle polling, timers, JIT) and its
  batches, and is not used: it does not grow with the fleet the way its batches do.
- **per batch** (a message through Mosquitto, a record through the bridge and into
  `edgesync.deltas`), in CPU microseconds, from `cargo bench -p edgesync-bridge --bench
  throughput` in the same session: its "CPU cores per 10k msg/s" of the bridge, Mosquitto and
  the Kafka broker, times 100. Given on the command line: the model states what it used.
- The Kafka broker's cost per event record can be given too (`--kafka-event-us`, the broker's
  µs per event from `cargo bench -p edgesync-reconciler --bench throughput`): across a capacity
  run its CPU falls as its JIT compiler settles, which hides the per-event slope.

A reconciler's device stage is one thread, so a fleet needs at least as many reconcilers as
that thread's cores at `--utilisation`.

A fleet of `--devices` x `--rate` events/s sending `--events-per-batch` events per batch (1,
the default, is the worst case: a device whose link keeps up sends each event as it comes)
needs per_event * events/s + per_batch * batches/s cores of each component, sized to
`--utilisation` of nodes of `--node-cores` cores. MQTT bytes per batch are fitted over the
steps as a header plus bytes per event (compressed). Printed as Markdown.
"""

import argparse
import json
import math

# Process names in the capacity JSON (local/src/usage.rs) -> the component they size.
COMPONENTS = [
    ("agents", "agents (all together)"),
    ("bridge", "bridge"),
    ("reconciler", "reconciler"),
    ("Mosquitto", "Mosquitto"),
    ("Apache Kafka", "Kafka broker (one node, replication 1)"),
]


def args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("capacity", help="a capacity JSON (docs/capacity-apache.json)")
    p.add_argument("--batch-us", required=True, type=batch_us,
                   help="CPU µs per batch: bridge=B,mosquitto=M,kafka=K (the bridge bench)")
    p.add_argument("--kafka-event-us", type=float, default=None,
                   help="the Kafka broker's CPU µs per event record (the reconciler bench)")
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=10.0, help="events/s per device")
    p.add_argument("--events-per-batch", type=float, default=1.0)
    p.add_argument("--node-cores", type=int, default=8)
    p.add_argument("--utilisation", type=float, default=0.6)
    p.add_argument("--replication", type=int, default=3)
    return p.parse_args()


def batch_us(text):
    costs = dict(kv.split("=", 1) for kv in text.split(","))
    if set(costs) != {"bridge", "mosquitto", "kafka"}:
        raise argparse.ArgumentTypeError("give bridge=..,mosquitto=..,kafka=..")
    return {k: float(v) for k, v in costs.items()}


def fit(xs, ys):
    """Least-squares line through (xs, ys): (slope, intercept)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise SystemExit("need two sustainable steps at different rates to fit a cost")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def cores_of(step, prefix):
    for p in step["cpu_cores"]["processes"]:
        if p["name"].startswith(prefix):
            return p["cores"]
    raise SystemExit(f"no process named {prefix}* in a step")


def thread_cores(step, prefix, thread):
    for p in step["cpu_cores"]["processes"]:
        if p["name"].startswith(prefix):
            return sum(c for t, c in p["by_thread"] if t == thread)
    return 0.0


def costs(steps, a):
    """Per component: (CPU-s per million events, CPU-s per million batches), and the
    reconciler's device-stage thread per million events."""
    rates = [s["delivered_events_per_s"] for s in steps]
    per_batch = {"bridge": a.batch_us["bridge"], "Mosquitto": a.batch_us["mosquitto"],
                 "Apache Kafka": a.batch_us["kafka"]}
    out = {}
    for prefix, name in COMPONENTS:
        per_event, _ = fit(rates, [cores_of(s, prefix) for s in steps])
        if prefix == "Apache Kafka" and a.kafka_event_us is not None:
            per_event = a.kafka_event_us / 1e6
        out[name] = (max(per_event, 0.0) * 1e6, per_batch.get(prefix, 0.0))
    device, _ = fit(rates, [thread_cores(s, "reconciler", "device-stage") for s in steps])
    return out, max(device, 0.0) * 1e6


def wire(steps):
    """MQTT bytes per batch as (a header, bytes per event), fitted over the steps."""
    per_batch = [1 / s["per_event"]["batches"] for s in steps]
    size = [s["per_event"]["mqtt_batch_bytes"] * n for s, n in zip(steps, per_batch)]
    per_event, header = fit(per_batch, size)
    return max(header, 0.0), per_event


def nodes(cores, a):
    return max(1, math.ceil(cores / (a.node_cores * a.utilisation)))


def plan(steps, a):
    """Rows of (what, needs, from)."""
    c, device = costs(steps, a)
    eps = a.devices * a.rate
    bps = eps / a.events_per_batch
    need = {k: (e * eps + b * bps) / 1e6 for k, (e, b) in c.items()}
    header, per_event = wire(steps)
    mqtt_bytes = header + per_event * a.events_per_batch
    last = max(steps, key=lambda s: s["delivered_events_per_s"])["per_event"]
    into_kafka = mqtt_bytes * bps + (last["event_record_bytes"] + last["state_record_bytes"]) * eps
    mbit = lambda bytes_per_s: f"{bytes_per_s * 8 / 1e6:,.0f} Mbit/s"  # noqa: E731
    rec, kafka = need["reconciler"], need["Kafka broker (one node, replication 1)"] * a.replication
    device_cores = device * eps / 1e6
    reconcilers = max(nodes(rec, a), math.ceil(device_cores / a.utilisation))
    brokers = max(a.replication, nodes(kafka, a))
    u = f"at {a.utilisation:.0%} of {a.node_cores}-core nodes"
    return [
        ("load", f"{eps:,.0f} events/s, {bps:,.0f} batches/s",
         f"{a.devices:,} devices x {a.rate:g} events/s, {a.events_per_batch:g} events per batch"),
        ("agent CPU per device", f"{need['agents (all together)'] / a.devices * 100:.3f} % of a core",
         "on the device or gateway, not in the data centre"),
        ("bridges", f"{nodes(need['bridge'], a)} ({need['bridge']:.1f} cores)",
         f"{u}; an MQTT shared subscription spreads the devices over them"),
        ("reconcilers", f"{reconcilers} ({rec:.1f} cores, device stages {device_cores:.1f})",
         f"{u}, and one device-stage thread each at {a.utilisation:.0%}; each owns its share "
         "of the partitions"),
        ("Kafka brokers", f"{brokers} ({kafka:.1f} cores)",
         f"one node's cost x replication {a.replication}, {u}; at least {a.replication}"),
        ("partitions of edgesync.deltas (and .events)", f"{brokers * math.ceil(4 * reconcilers / brokers)}",
         "4 per reconciler (a lost process's share spreads over the rest), a multiple of the brokers"),
        ("MQTT broker nodes", f"{nodes(need['Mosquitto'], a)} ({need['Mosquitto']:.1f} cores at Mosquitto's cost per message)",
         f"{u}; a clustered broker with shared subscriptions (EMQX, VerneMQ): Mosquitto is one "
         f"thread, does not cluster, and {a.devices:,} connections are a cluster's load"),
        ("network: devices -> MQTT", mbit(mqtt_bytes * bps),
         f"{mqtt_bytes:.0f} B per batch ({header:.0f} B header + {per_event:.1f} B per event, compressed)"),
        ("network: into Kafka (leaders)", mbit(into_kafka),
         f"the batches, plus {last['event_record_bytes']:.0f} B event and {last['state_record_bytes']:.0f} B "
         "converged records per event, before the topics' lz4"),
        ("network: replication", mbit(into_kafka * (a.replication - 1)), f"x {a.replication - 1} followers"),
    ]


def main():
    a = args()
    run = json.load(open(a.capacity))
    steps = [s for s in run["steps"] if s["sustainable"] and "per_event" in s]
    if len(steps) < 2:
        raise SystemExit("need two sustainable steps with traffic figures (a newer capacity run)")
    c, device = costs(steps, a)
    print(f"Per event: {run['broker']}, {run['date']}, source {run['source']}, "
          f"{len(steps)} sustainable steps up to {max(s['delivered_events_per_s'] for s in steps):,.0f} "
          f"events/s ({run['agents']} agents, {run['machine']['cores']} cores). Per batch: "
          f"as given (--batch-us){'; the Kafka broker per event as given (--kafka-event-us)' if a.kafka_event_us is not None else ''}.\n")
    print("| component | CPU-s per million events | CPU-s per million batches |")
    print("|---|---|---|")
    for name, (e, b) in c.items():
        print(f"| {name} | {e:.1f} | {b:,.0f} |")
    print(f"| reconciler: its device-stage thread | {device:.1f} | |")
    print(f"\n| for {a.devices:,} devices x {a.rate:g} events/s | needs | from |\n|---|---|---|")
    for row in plan(steps, a):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
