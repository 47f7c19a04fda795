#!/usr/bin/env python3
"""Read edgesync's output topics as an analytics team would.

Only PyPI's confluent-kafka and fastavro: no edgesync code. Two ways, as a team reads them:

  --schemas DIR   the .avsc files in schemas/avro, for topics in single-object encoding
                  (C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
                  schema's canonical form, then the datum; the fingerprint is checked against
                  the schema file before decoding).
  --registry URL  a Schema Registry's Confluent-compatible API and nothing else: records in
                  the Confluent wire format (00, a 4-byte big-endian schema id, then the
                  datum) are decoded by confluent-kafka's own SchemaRegistryClient and
                  AvroDeserializer. Records written before the services were given the
                  registry are single-object: the first byte tells them apart, and their
                  writer schema is found among the subject's registered versions by
                  fingerprint, so they too are read without .avsc files.

Prints one JSON document: per device the seqs found in the events topic (topic order), per
device the sum of each event's numeric `pressure_kpa` field, per key the latest converged
counter value in the state topic, how many records came in each framing, and with
--completeness per device the latest record of the compacted completeness topic (a line per
incarnation).

    read_outputs.py --bootstrap 127.0.0.1:9092 (--schemas schemas/avro | --registry URL)
        --events N [--isolation read_committed|read_uncommitted] [--completeness]

read_committed (the default, as for Kafka's own clients) skips records of aborted
transactions, which the reconciler's exactly_once = "transactions" relies on.
"""

import argparse
import io
import json
import os
import time

import fastavro
from confluent_kafka import Consumer
from fastavro.schema import fingerprint, to_parsing_canonical_form

SINGLE_OBJECT = b"\xc3\x01"
CONFLUENT = b"\x00"


def fp_of(schema):
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class FileSchemas:
    """Writer schemas from the .avsc files."""

    def __init__(self, directory):
        self.directory = directory

    def reader(self, topic, name):
        with open(os.path.join(self.directory, name)) as f:
            schema = fastavro.parse_schema(json.load(f))
        known = {fp_of(schema): schema}

        def decode(data):
            if data[:2] != SINGLE_OBJECT:
                raise ValueError("not Avro single-object encoding")
            return ("single-object", single_object(known, data))
        return decode


class RegistrySchemas:
    """Writer schemas from a Schema Registry, by id (Confluent framing) or by the fingerprint
    of one of the subject's versions (single-object framing)."""

    def __init__(self, url):
        from confluent_kafka.schema_registry import SchemaRegistryClient
        self.client = SchemaRegistryClient({"url": url})

    def reader(self, topic, _name):
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext
        deserializer = AvroDeserializer(self.client)
        context = SerializationContext(topic, MessageField.VALUE)
        known = {}
        subject = f"{topic}-value"
        for v in self.client.get_versions(subject):
            s = self.client.get_version(subject, v).schema.schema_str
            schema = fastavro.parse_schema(json.loads(s))
            known[fp_of(schema)] = schema

        def decode(data):
            if data[:1] == CONFLUENT:
                return ("confluent", deserializer(data, context))
            return ("single-object", single_object(known, data))
        return decode


def single_object(known, data):
    if data[:2] != SINGLE_OBJECT:
        raise ValueError(f"neither Confluent nor single-object framing: {data[:2].hex()}")
    schema = known.get(data[2:10])
    if schema is None:
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
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--schemas")
    source.add_argument("--registry")
    ap.add_argument("--events", type=int, required=True, help="events expected at least")
    ap.add_argument("--isolation", default="read_committed",
                    choices=["read_committed", "read_uncommitted"])
    ap.add_argument("--completeness", action="store_true")
    args = ap.parse_args()
    schemas = RegistrySchemas(args.registry) if args.registry else FileSchemas(args.schemas)
    framings = {}

    def decoded(topic, name, records):
        decode = schemas.reader(topic, name)
        for raw in records:
            framing, value = decode(raw)
            framings.setdefault(topic, {}).setdefault(framing, 0)
            framings[topic][framing] += 1
            yield value

    events, replicas, sums = {}, {}, {}
    raw = read_all(args.bootstrap, "edgesync.events", lambda r: len(r) >= args.events,
                   args.isolation)
    for e in decoded("edgesync.events", "event.avsc", raw):
        events.setdefault(e["device"], []).append(e["seq"])
        replicas.setdefault(f'{e["device"]}@{e["incarnation"]}', []).append(e["seq"])
        p = e["fields"].get("pressure_kpa")
        if isinstance(p, (int, float)):
            sums[e["device"]] = sums.get(e["device"], 0.0) + p

    state = {}
    raw = read_all(args.bootstrap, "edgesync.state", lambda r: len(r) > 0, args.isolation)
    for s in decoded("edgesync.state", "state_record.avsc", raw):
        if s["kind"] in ("G_COUNTER", "PN_COUNTER"):
            state[s["key"]] = s["counter"]
    report = {"events": events, "replicas": replicas, "sums": sums, "state": state, "framings": framings}
    if args.completeness:
        report["completeness"] = {}
        raw = read_all(args.bootstrap, "edgesync.completeness", lambda r: len(r) > 0,
                       args.isolation)
        for c in decoded("edgesync.completeness", "completeness.avsc", raw):
            report["completeness"][c["device"]] = [{
                "incarnation": r["incarnation"],
                "watermark": r["watermark"],
                "max_seen": r["max_seen"],
                "missing": [[m["first"], m["last"]] for m in r["missing"]],
                "pending": r["pending"],
                "gap_age_ms": r["gap_age_ms"],
                "dropped": r["dropped"],
                "completeness": r["completeness"],
                "wire_bytes": r["wire_bytes"],
            } for r in c["replicas"]]
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
