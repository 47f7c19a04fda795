"""A Sparkplug B edge node, written with PyPI's pysparkplug, publishing to a local broker.

Usage: sparkplug_node.py HOST PORT

Group `plant1`, edge node `gw1` with device `pump7`, and a second node `gw2` that never
births. The node goes through what a host application must handle: births with aliases, data
by name and by alias only, node data, historical (store-and-forward) samples of one metric in
one message, a seq that wraps past 255, a seq gap (answered with a rebirth when the host asks
for one), data before birth, an unknown alias, a payload that is not protobuf, and deaths.

Prints a JSON report: `expected`, every metric set the host should turn into an event (a
birth's values included), in publish order (`tags`, `fields` with the field names the host derives, `event_time_ms`);
`rebirths`, the nodes whose `Node Control/Rebirth` command arrived; `counts`, the problems
the host should count at least once.
"""

import datetime
import json
import re
import sys
import threading
import time

import paho.mqtt.client as paho
import pysparkplug as spb

GROUP, NODE, DEVICE, GHOST = "plant1", "gw1", "pump7", "gw2"

# name, datatype, alias, value of the first sample
DEVICE_METRICS = [
    ("Inputs/Pressure", spb.DataType.DOUBLE, 10, 101.25),
    ("Inputs/Temp", spb.DataType.FLOAT, 11, 21.5),
    ("Outputs/Count", spb.DataType.INT64, 12, 3),
    ("Status", spb.DataType.STRING, 13, "running"),
    ("Running", spb.DataType.BOOLEAN, 14, True),
    ("Level", spb.DataType.INT8, 15, -5),
    ("Flow", spb.DataType.UINT32, 16, 4000000000),
    ("Started At", spb.DataType.DATETIME, 17, datetime.datetime.fromtimestamp(1_700_000_000.5, datetime.timezone.utc)),
]
NODE_METRICS = [("Uptime", spb.DataType.UINT32, 1, 0)]


def field(name):
    """The event field name the host derives from a metric name."""
    f = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f if re.match(r"[A-Za-z_]", f) else "_" + f


def wire(value):
    """How the value reads back from an event field: a DateTime as ms since the epoch."""
    if isinstance(value, datetime.datetime):
        return round(value.timestamp() * 1000)
    return value


class Node:
    def __init__(self, host, port):
        self.client = spb.Client(client_id="sparkplug-node-test")
        self.raw = paho.Client(client_id="sparkplug-raw-test")
        self.seq = 0
        self.expected = []
        self.rebirths = []
        self.reborn = threading.Event()
        self.bd_seq = spb.Metric(
            timestamp=spb.get_current_timestamp(),
            name="bdSeq",
            datatype=spb.DataType.INT64,
            value=0,
        )
        self.client.set_will(
            spb.Message(
                topic=self.topic(spb.MessageType.NDEATH),
                payload=spb.NDeath(timestamp=spb.get_current_timestamp(), bd_seq_metric=self.bd_seq),
                qos=spb.QoS.AT_MOST_ONCE,
                retain=False,
            )
        )
        self.client.connect(host, port=port, blocking=False)
        self.raw.connect(host, port)
        self.raw.loop_start()
        for node in (NODE, GHOST):
            self.client.subscribe(
                spb.Topic(message_type=spb.MessageType.NCMD, group_id=GROUP, edge_node_id=node),
                spb.QoS.AT_LEAST_ONCE,
                self.on_command,
            )
        time.sleep(1.0)

    def topic(self, kind, device=None, node=NODE):
        return spb.Topic(message_type=kind, group_id=GROUP, edge_node_id=node, device_id=device)

    def on_command(self, _client, message):
        names = [m.name for m in message.payload.metrics]
        if "Node Control/Rebirth" in names:
            self.rebirths.append(message.topic.edge_node_id)
            self.reborn.set()

    def next_seq(self):
        s = self.seq
        self.seq = (self.seq + 1) % 256
        return s

    def send(self, kind, payload, device=None, node=NODE, dtypes=True):
        self.client.publish(
            spb.Message(
                topic=self.topic(kind, device, node),
                payload=payload,
                qos=spb.QoS.AT_MOST_ONCE,
                retain=False,
            ),
            include_dtypes=dtypes,
        )
        # QoS 0 as the spec has it: paced so the broker's queue for the host never overflows.
        time.sleep(0.005)

    def births(self):
        now = spb.get_current_timestamp()
        self.seq = 0
        node_metrics = [self.bd_seq, spb.Metric(now, "Node Control/Rebirth", spb.DataType.BOOLEAN, value=False)]
        node_metrics += [spb.Metric(now, n, t, value=v, alias=a) for n, t, a, v in NODE_METRICS]
        self.send(spb.MessageType.NBIRTH, spb.NBirth(now, self.next_seq(), tuple(node_metrics)))
        # A birth's readings are events too; its bdSeq and controls are not.
        self.expect([(n, v, now, False) for n, _, _, v in NODE_METRICS], None, birth=True)
        dev = [spb.Metric(now, n, t, value=v, alias=a) for n, t, a, v in DEVICE_METRICS]
        self.send(spb.MessageType.DBIRTH, spb.DBirth(now, self.next_seq(), tuple(dev)), DEVICE)
        self.expect([(n, v, now, False) for n, _, _, v in DEVICE_METRICS], DEVICE, birth=True)

    def data(self, samples, device=DEVICE, by_alias=False, seq=None, expect=True):
        """samples: [(name, value, timestamp, historical)]; one DDATA (or NDATA)."""
        defs = {n: (t, a) for n, t, a, _ in DEVICE_METRICS + NODE_METRICS}
        metrics = []
        for name, value, ts, hist in samples:
            t, a = defs[name]
            metrics.append(
                spb.Metric(ts, None if by_alias else name, t, value=value, alias=a, is_historical=hist)
            )
        kind = spb.MessageType.DDATA if device else spb.MessageType.NDATA
        payload_cls = spb.DData if device else spb.NData
        seq = self.next_seq() if seq is None else seq
        self.send(kind, payload_cls(spb.get_current_timestamp(), seq, tuple(metrics)), device, dtypes=not by_alias)
        if expect:
            self.expect(samples, device)

    def expect(self, samples, device, birth=False):
        """The host's events: one per run of samples with one timestamp and flag, no repeat."""
        events = []
        for name, value, ts, hist in samples:
            f = field(name)
            last = events[-1] if events else None
            if not last or last["key"] != (ts, hist) or f in last["fields"]:
                tags = {"sp_group": GROUP, "sp_node": NODE}
                if device:
                    tags["sp_device"] = device
                if hist:
                    tags["is_historical"] = "true"
                if birth:
                    tags["sp_birth"] = "true"
                last = {"key": (ts, hist), "tags": tags, "fields": {"event_time_ms": ts}}
                events.append(last)
            last["fields"][f] = wire(value)
        for e in events:
            del e["key"]
            self.expected.append(e)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    n = Node(host, port)
    n.births()
    t0 = spb.get_current_timestamp()
    # By name, every datatype.
    n.data([(name, v, t0, False) for name, _, _, v in DEVICE_METRICS])
    # By alias only: the host types them from the birth.
    n.data([("Inputs/Pressure", 99.75, t0 + 1, False), ("Level", 7, t0 + 1, False), ("Status", "idle", t0 + 1, False)], by_alias=True)
    # Node data.
    n.data([("Uptime", 42, t0 + 2, False)], device=None)
    # Store and forward: three historical samples of one metric in one message, then live.
    n.data(
        [("Inputs/Pressure", 100.0 + i, t0 - 60_000 + i * 1000, True) for i in range(3)]
        + [("Inputs/Pressure", 103.5, t0 + 3, False), ("Outputs/Count", 2, t0 + 3, False)]
    )
    # Past 255: the seq wraps.
    for i in range(260):
        n.data([("Inputs/Pressure", 50.0 + i / 4, t0 + 10 + i, False), ("Outputs/Count", 1, t0 + 10 + i, False)])
    # A gap: one seq skipped. The data is still taken; the host asks for a rebirth.
    n.reborn.clear()
    n.next_seq()
    n.data([("Inputs/Temp", -3.5, t0 + 400, False)])
    if not n.reborn.wait(10):
        print("no rebirth request after a seq gap", file=sys.stderr)
        sys.exit(1)
    n.births()
    n.data([("Running", False, t0 + 401, False), ("Outputs/Count", 5, t0 + 401, False)])
    # Data from a node that never was born: nothing can be read, a rebirth is asked of it.
    ghost = spb.NData(spb.get_current_timestamp(), 7, (spb.Metric(t0, None, spb.DataType.INT64, value=1, alias=1),))
    n.client.publish(spb.Message(topic=n.topic(spb.MessageType.NDATA, node=GHOST), payload=ghost, qos=spb.QoS.AT_MOST_ONCE, retain=False))
    # An unknown alias beside a known one: the known one is taken.
    unknown = spb.DData(
        spb.get_current_timestamp(),
        n.next_seq(),
        (spb.Metric(t0 + 402, None, spb.DataType.INT64, value=9, alias=99), spb.Metric(t0 + 402, None, spb.DataType.DOUBLE, value=12.5, alias=10)),
    )
    n.send(spb.MessageType.DDATA, unknown, DEVICE, dtypes=False)
    n.expect([("Inputs/Pressure", 12.5, t0 + 402, False)], DEVICE)
    # Not protobuf at all.
    n.raw.publish(str(n.topic(spb.MessageType.DDATA, DEVICE)), b"\xff\xfe not a payload", qos=0).wait_for_publish()
    # The last live value, then the device and the node die.
    n.data([("Inputs/Pressure", 1.5, t0 + 403, False)])
    n.send(spb.MessageType.DDEATH, spb.DDeath(spb.get_current_timestamp(), n.next_seq()), DEVICE)
    n.send(spb.MessageType.NDEATH, spb.NDeath(spb.get_current_timestamp(), n.bd_seq))
    time.sleep(1.0)
    deadline = time.time() + 10
    while GHOST not in n.rebirths and time.time() < deadline:
        time.sleep(0.1)
    n.client.disconnect()
    n.raw.disconnect()
    print(json.dumps({
        "expected": n.expected,
        "rebirths": sorted(set(n.rebirths)),
        "counts": ["seq_gap", "before_birth", "unknown_alias", "malformed"],
    }))


if __name__ == "__main__":
    main()
