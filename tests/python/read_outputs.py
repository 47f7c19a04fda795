#!/usr/bin/env python3
"""Read edgesync's output topics as an analytics team would.

Only PyPI's confluent-kafka and fastavro, and the .avsc files in schemas/avro: no edgesync
code. Records are Avro single-object encoded (C3 01, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's canonical form, then the datum); the fingerprint is checked
against the schema file before decoding.

Prints one JSON document: per device the seqs found in the events topic (topic order), and per
key the latest converged counter value in the state topic.

    read_outputs.py --bootstrap 127.0.0.1:9092 --schemas schemas/avro --events N
        [--isolation read_committed|read_uncommitted]

read_committed (the default, as for Kafka's own clients) skips records of aborted
transactions, which the reconciler's exactly_once = "transactions" relies on.
"""

import argparse
import io
import json
import time

import fastavro
from confluent_kafka import Consumer
from fastavro.schema import fingerprint, to_parsing_canonical_form


def load(schemas, name):
    with open(f"{schemas}/{name}") as f:
        schema = fastavro.parse_schema(json.load(f))
    return schema, bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def decode(schema, fp, data):
    if data[:2] != b"\xc3\x01":
        raise ValueError("not Avro single-object encoding")
    if data[2:10] != fp:
        raise ValueError(f"unknown writer schema fingerprint {data[2:10].hex()}")
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)


def read_all(bootstrap, topic, enough, isolation, idle_s=3.0, timeout_s=60.0):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "isolation.level": isolation,
        "group.id": f"analytics-{topic}-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    out, last, start = [], time.time(), time.time()
    while time.time() - start < timeout_s:
        m = c.poll(0.2)
        if m is None:
            if enough(out) and time.time() - last > idle_s:
                break
            continue
        if m.error():
            continue
        out.append(m.value())
        last = time.time()
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--events", type=int, required=True, help="events expected at least")
    ap.add_argument("--isolation", default="read_committed",
                    choices=["read_committed", "read_uncommitted"])
    args = ap.parse_args()
    event_schema, event_fp = load(args.schemas, "event.avsc")
    state_schema, state_fp = load(args.schemas, "state_record.avsc")

    events = {}
    for raw in read_all(args.bootstrap, "edgesync.events", lambda r: len(r) >= args.events,
                        args.isolation):
        e = decode(event_schema, event_fp, raw)
        events.setdefault(e["device"], []).append(e["seq"])

    state = {}
    for raw in read_all(args.bootstrap, "edgesync.state", lambda r: len(r) > 0, args.isolation):
        s = decode(state_schema, state_fp, raw)
        if s["kind"] in ("G_COUNTER", "PN_COUNTER"):
            state[s["key"]] = s["counter"]
    print(json.dumps({"events": events, "state": state}, sort_keys=True))


if __name__ == "__main__":
    main()
