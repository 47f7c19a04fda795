//! What an Apache Kafka broker served, by request type, read from its own JMX metrics
//! (`kafka.network:type=RequestMetrics`) through the JDK's attach API by
//! `testkit/java/BrokerRequests.java`: for benchmarks that compare how two clients load the
//! broker (requests per record, time spent in them), not only how fast they are.

use std::collections::BTreeMap;

/// One request type's counters since the broker started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Served {
    /// Requests served.
    pub requests: u64,
    /// Milliseconds spent handling them on the broker's request threads (`LocalTimeMs`).
    pub local_ms: u64,
}

/// A reading: per request type (`Produce`, `Fetch`, ...), the records appended, and per topic
/// the produce requests and records appended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// By request type.
    pub by_type: BTreeMap<String, Served>,
    /// Records appended to the broker's logs (`MessagesInPerSec`).
    pub records: u64,
    /// Per topic: produce requests (one partition's batch each, as librdkafka sends them;
    /// `TotalProduceRequestsPerSec`) and records appended.
    pub topics: BTreeMap<String, (u64, u64)>,
}

impl Reading {
    /// What happened between `before` and this reading.
    pub fn since(&self, before: &Reading) -> Reading {
        let by_type = self
            .by_type
            .iter()
            .map(|(t, s)| {
                let b = before.by_type.get(t).copied().unwrap_or_default();
                let d = Served {
                    requests: s.requests.saturating_sub(b.requests),
                    local_ms: s.local_ms.saturating_sub(b.local_ms),
                };
                (t.clone(), d)
            })
            .filter(|(_, d)| d.requests > 0)
            .collect();
        let topics = self
            .topics
            .iter()
            .map(|(t, (req, rec))| {
                let (b_req, b_rec) = before.topics.get(t).copied().unwrap_or_default();
                (
                    t.clone(),
                    (req.saturating_sub(b_req), rec.saturating_sub(b_rec)),
                )
            })
            .filter(|(_, (req, _))| *req > 0)
            .collect();
        Reading {
            by_type,
            records: self.records.saturating_sub(before.records),
            topics,
        }
    }
}

/// Reads the counters of the Apache Kafka broker running as process `pid` (same user); `None`
/// when they cannot be read (not a JVM, or no JDK with the attach module).
pub fn read(pid: u32) -> Option<Reading> {
    // The attach API asks a process for its attach listener with SIGQUIT, which ends any
    // process that is not a JVM (tansu): never attach to one.
    if !is_jvm(pid) {
        return None;
    }
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/java/BrokerRequests.java");
    let out = std::process::Command::new("java")
        .args(["--add-modules", "jdk.attach", source, &pid.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Whether process `pid` has a JVM loaded.
fn is_jvm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("/libjvm.so"))
}

fn parse(text: &str) -> Option<Reading> {
    let mut r = Reading::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["records", n] => r.records = n.parse().ok()?,
            ["topic", t, req, rec] => {
                r.topics
                    .insert((*t).to_owned(), (req.parse().ok()?, rec.parse().ok()?));
            }
            [t, n, ms] => {
                let s = Served {
                    requests: n.parse().ok()?,
                    local_ms: ms.parse().ok()?,
                };
                r.by_type.insert((*t).to_owned(), s);
            }
            _ => return None,
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_parse_and_subtract() {
        let a = parse("Fetch 10 5\nProduce 4 2\nrecords 100\ntopic e 3 90\n").unwrap();
        let b = parse("Fetch 30 9\nProduce 4 2\nrecords 350\ntopic e 5 290\n").unwrap();
        let d = b.since(&a);
        assert_eq!(d.records, 250);
        assert_eq!(
            d.by_type.get("Fetch"),
            Some(&Served {
                requests: 20,
                local_ms: 4
            })
        );
        assert!(!d.by_type.contains_key("Produce"), "no Produce in between");
        assert_eq!(d.topics.get("e"), Some(&(2, 200)));
        assert_eq!(parse("garbage"), None);
    }
}
