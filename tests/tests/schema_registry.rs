//! The analytics side through a real Schema Registry (Apicurio, from Maven Central) on Apache
//! Kafka: the services register their output schemas under `<topic>-value` with BACKWARD
//! compatibility and frame records in the Confluent wire format; confluent-kafka's own
//! `SchemaRegistryClient` and `AvroDeserializer` read them with no `.avsc` file, across a
//! switch from single-object framing; a schema evolves through the registry; a schema the
//! registry refuses stops a service's start with a clear error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, Limits, MessageKind};
use edgesync_servicekit::registry::{
    frame_outputs, subject, Registry, RegistryError, RegistrySection,
};
use edgesync_testkit::analytics::{console_consumer, DeviceTotals};
use edgesync_testkit::{read_outputs_from, Broker, Kafka, SchemaRegistry, TestPki, CCOMPAT_PATH};
use edgesync_tests::{binary, Fleet};

/// The events schema with its field list changed by `edit`.
fn event_schema(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut schema: serde_json::Value = serde_json::from_str(MessageKind::Event.avsc()).unwrap();
    edit(schema["fields"].as_array_mut().unwrap());
    schema.to_string()
}

/// The events schema with `field` (a JSON field definition) added.
fn event_schema_with(field: &str) -> String {
    event_schema(|fields| fields.push(serde_json::from_str(field).unwrap()))
}

#[test]
fn analytics_read_the_pipeline_through_the_registry_across_a_switch_of_framing() {
    let mut k = Kafka::start_on(Broker::Apache).unwrap();
    let registry = SchemaRegistry::start().unwrap();
    let mut f = Fleet::start(&k, "sr-pump", 3, &["partitions=4"]);
    f.send_round(20);
    // Some events are out in single-object framing before the services get the registry.
    let deadline = Instant::now() + Duration::from_secs(60);
    while k
        .read_topic(topics::EVENTS, Duration::from_secs(2), |r| r.len() >= 30)
        .unwrap()
        .len()
        < 30
    {
        assert!(Instant::now() < deadline, "no events before the switch");
    }
    f.use_registry(&registry.url());
    for _ in 0..3 {
        f.send_round(20);
        std::thread::sleep(Duration::from_millis(300));
    }
    // The whole history, read by the outside reader through the registry alone.
    f.assert_converged(&mut k, Duration::from_secs(180));

    let read = read_outputs_from(
        &k.bootstrap(),
        Some(&registry.url()),
        240,
        "read_committed",
        false,
    )
    .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log_tail(30)));
    let framings = &read["framings"];
    assert!(framings[topics::EVENTS]["single-object"].as_u64().unwrap() >= 30);
    assert!(framings[topics::EVENTS]["confluent"].as_u64().unwrap() > 0);
    assert!(framings[topics::STATE]["confluent"].as_u64().unwrap() > 0);
    for d in &f.devices {
        // Every event carries pressure_kpa = 101.5 (edgesync_tests::events).
        assert_eq!(read["sums"][d].as_f64(), Some(101.5 * 80.0), "{d}");
    }
    for topic in [topics::EVENTS, topics::STATE, topics::DLQ] {
        let path = format!("{CCOMPAT_PATH}/config/{}", subject(topic));
        let (status, body) = edgesync_servicekit::http::get(registry.addr(), &path).unwrap();
        assert_eq!(status, 200, "{topic}: {body}");
        assert!(body.contains("\"BACKWARD\""), "{topic}: {body}");
    }
}

/// The analytics team's Java tools, reading a pipeline that used the registry from its first
/// record, with transactions on (so the topic holds aborted records a `read_committed` reader
/// must skip: the reconciler is killed mid-run).
#[test]
fn kafka_console_consumer_and_a_kafka_streams_job_read_the_events_through_the_registry() {
    let mut k = Kafka::start_on(Broker::Apache).unwrap();
    let registry = SchemaRegistry::start().unwrap();
    let url = registry.url();
    let transactions = ["exactly_once=\"transactions\""];
    let mut f = Fleet::start_with(
        &k,
        "an-pump",
        3,
        &["partitions=4"],
        &transactions,
        Some(&url),
    );
    let totals_topic = "analytics.device-totals";
    let streams = DeviceTotals::start(
        &k.bootstrap(),
        &registry,
        topics::EVENTS,
        totals_topic,
        "edgesync-analytics",
    )
    .unwrap();
    for round in 0..4 {
        f.send_round(20);
        if round == 1 {
            f.reconciler.process.restart().unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    f.assert_converged(&mut k, Duration::from_secs(180));
    let total = f.answered();

    // kafka-console-consumer, read_committed, values decoded through the registry.
    let lines = console_consumer(
        &k.bootstrap(),
        topics::EVENTS,
        &registry,
        total,
        "read_committed",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in &lines {
        let (key, value) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("no key: {line}"));
        let e: serde_json::Value =
            serde_json::from_str(value).unwrap_or_else(|err| panic!("{err}: {value}"));
        assert_eq!(e["device"], key, "{line}");
        assert_eq!(e["fields"]["pressure_kpa"], 101.5, "{line}");
        seqs.entry(key.to_owned())
            .or_default()
            .push(e["seq"].as_u64().unwrap());
    }
    for d in &f.devices {
        assert_eq!(
            seqs.remove(d).unwrap_or_default(),
            f.answered_seqs(d),
            "{d} as kafka-console-consumer sees it"
        );
    }
    assert!(seqs.is_empty(), "unknown devices: {seqs:?}");

    // The Kafka Streams job's totals per device: the count and sum of the reference.
    let want: BTreeMap<String, String> = f
        .devices
        .iter()
        .map(|d| {
            let n = f.answered_seqs(d).len();
            (d.clone(), format!("{n} {:?}", 101.5 * n as f64))
        })
        .collect();
    let latest = |records: &[edgesync_testkit::Record]| -> BTreeMap<String, String> {
        records
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    String::from_utf8_lossy(&r.payload).into_owned(),
                )
            })
            .collect()
    };
    let records = k
        .read_topic(totals_topic, Duration::from_secs(120), |r| {
            latest(r) == want
        })
        .unwrap();
    assert_eq!(
        latest(&records),
        want,
        "Kafka Streams totals\n{}",
        streams.log_tail(30)
    );
}

#[test]
fn a_schema_evolves_backward_through_the_registry_and_an_incompatible_one_is_refused() {
    let registry = SchemaRegistry::start().unwrap();
    let section = RegistrySection::at(registry.url());
    let client = Registry::new(&section).unwrap();
    let events = subject(topics::EVENTS);

    let v1 = client.publish(&events, MessageKind::Event.avsc()).unwrap();
    let added = r#"{"name": "site", "type": ["null", "string"], "default": null, "doc": "Where."}"#;
    let v2 = client.publish(&events, &event_schema_with(added)).unwrap();
    assert_ne!(v1.id, v2.id);
    assert_eq!(v2.versions.len(), 2);

    // A later start of this release: its own schema's id again, and the newer version read.
    let mut codec = Codec::new(Limits::default()).unwrap();
    frame_outputs(
        &section,
        &mut codec,
        &[(topics::EVENTS, MessageKind::Event)],
    )
    .unwrap();
    assert_eq!(
        codec.output_framing(MessageKind::Event),
        edgesync_schemas::Framing::Confluent { schema_id: v1.id }
    );

    // A required field without a default: records written before cannot be read with it.
    let required = r#"{"name": "owner", "type": "string", "doc": "Who."}"#;
    match client.publish(&events, &event_schema_with(required)) {
        Err(RegistryError::Incompatible { subject, level, .. }) => {
            assert_eq!(
                (subject.as_str(), level.as_str()),
                (events.as_str(), "BACKWARD")
            );
        }
        other => panic!("an incompatible schema was not refused: {other:?}"),
    }
}

/// A registry behind TLS that asks for a client certificate: the client verifies it against
/// the configured CA (and refuses it without), and presents its certificate.
#[test]
fn the_registry_client_verifies_the_registry_and_presents_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path(), "edgesync-reconciler").unwrap();
    let registry = SchemaRegistry::start_tls(&pki).unwrap();
    let outputs = [(topics::EVENTS, MessageKind::Event)];
    let mut section = RegistrySection::at(registry.url());
    assert!(section.url.starts_with("https://"));
    section.ca_file = Some(pki.ca.clone());
    section.client_cert_file = Some(pki.client_cert.clone());
    section.client_key_file = Some(pki.client_key.clone());
    let mut codec = Codec::new(Limits::default()).unwrap();
    frame_outputs(&section, &mut codec, &outputs)
        .unwrap_or_else(|e| panic!("{e}\n{}", registry.log_tail(20)));
    assert!(matches!(
        codec.output_framing(MessageKind::Event),
        edgesync_schemas::Framing::Confluent { .. }
    ));
    // The Web PKI roots do not know the test CA.
    let untrusted = RegistrySection {
        ca_file: None,
        ..section.clone()
    };
    let e = frame_outputs(&untrusted, &mut codec, &outputs).unwrap_err();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
    // Without a client certificate the registry ends the handshake.
    let anonymous = RegistrySection {
        client_cert_file: None,
        client_key_file: None,
        ..section
    };
    let e = frame_outputs(&anonymous, &mut codec, &outputs).unwrap_err();
    assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
}

#[test]
fn a_reconciler_whose_schema_the_registry_refuses_does_not_start() {
    let registry = SchemaRegistry::start().unwrap();
    let client = Registry::new(&RegistrySection::at(registry.url())).unwrap();
    // The subject's latest version has no `tags`; ours requires it: ours cannot read those
    // records, which BACKWARD forbids.
    let without_tags = event_schema(|fields| fields.retain(|f| f["name"] != "tags"));
    client
        .publish(&subject(topics::EVENTS), &without_tags)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("edgesync-reconciler"))
        .args([
            "--set",
            &format!("schema_registry.url={:?}", registry.url()),
        ])
        .args([
            "--set",
            &format!("state_dir={:?}", dir.path().join("state")),
        ])
        .args(["--set", "http.listen=\"127.0.0.1:0\""])
        .args(["--set", "kafka.bootstrap_servers=\"127.0.0.1:1\""])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway:\n{log}");
    assert!(
        log.contains("edgesync.events-value is not BACKWARD-compatible"),
        "unclear error:\n{log}"
    );
}
