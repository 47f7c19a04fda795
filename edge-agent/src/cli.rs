//! What the `status` and `spool` commands do (the binary only parses arguments).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::{Dot, ReplicaId};
use edgesync_schemas::{Codec, Limits};

use crate::config::Config;
use crate::http::status_json;
use crate::lanes::{OpenLane, DEFAULT_LANE};
use crate::service::uplink_config;
use crate::spool::{system_clock, Entry, Spool, SpoolError};

fn open_read_only(cfg: &Config) -> Result<Spool, String> {
    Spool::open_read_only(&cfg.spool.dir)
        .map_err(|e| format!("spool {}: {e}", cfg.spool.dir.display()))
}

/// `status`: from the running agent, or from the spool when it is not running.
pub fn status(cfg: &Config) -> Result<ExitCode, String> {
    if let Ok((200, body)) = edgesync_servicekit::http::get(cfg.http.listen, "/v1/status") {
        println!("{}", body.trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let mut lanes = Vec::new();
    for lane in cfg.lanes() {
        let lane_cfg = cfg.for_lane(&lane.name).map_err(|e| e.to_string())?;
        if lane.name != DEFAULT_LANE && !lane_cfg.spool.dir.exists() {
            continue; // a lane added since the agent last ran: nothing spooled yet
        }
        let spool = Arc::new(open_read_only(&lane_cfg)?);
        lanes.push(OpenLane::new(&lane, spool, lane_cfg.spool.policy));
    }
    let codec = edgesync_schemas::Codec::new(edgesync_schemas::Limits::default())
        .map_err(|e| format!("codec: {e}"))?;
    let doc = status_json(&lanes, &codec, &cfg.device.id, None, (system_clock())());
    println!("{doc}");
    Ok(ExitCode::SUCCESS)
}

/// `spool inspect`: metadata, then records as JSON lines.
pub fn inspect(cfg: &Config, from: Option<u64>, limit: usize) -> Result<ExitCode, String> {
    let spool = open_read_only(cfg)?;
    let meta = spool.meta();
    let codec = Codec::new(Limits::default()).map_err(|e| e.to_string())?;
    let device = cfg.device_id().map_err(|e| e.to_string())?;
    let replica = ReplicaId::new(device, meta.incarnation);
    println!(
        "{}",
        serde_json::json!({
            "incarnation": meta.incarnation.get(),
            "next_seq": meta.next_seq,
            "acked": meta.acked,
            "events": meta.events,
            "bytes": meta.bytes,
            "oldest_ms": meta.oldest_ms,
        })
    );
    let from = from.unwrap_or(meta.acked + 1);
    let entries = spool
        .read(from, limit, usize::MAX)
        .map_err(|e| e.to_string())?;
    for e in entries {
        println!("{}", entry_json(&codec, &replica, &e));
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(codec: &Codec, replica: &ReplicaId, e: &Entry) -> serde_json::Value {
    match e {
        Entry::Event {
            seq,
            appended_ms,
            body,
        } => match codec.decode_spool_record(body, Dot::new(replica.clone(), *seq)) {
            Ok((ev, deltas)) => serde_json::json!({
                "seq": seq,
                "appended_ms": appended_ms,
                "hlc": format!("{}.{}", ev.hlc.wall_ms, ev.hlc.logical),
                "stream": ev.stream,
                "fields": ev.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<serde_json::Map<_, _>>(),
                "tags": ev.tags,
                "deltas": deltas.iter().map(|(k, c)| serde_json::json!({"key": k, "type": c.kind().name()})).collect::<Vec<_>>(),
                "bytes": body.len(),
            }),
            Err(err) => {
                serde_json::json!({"seq": seq, "error": err.to_string(), "bytes": body.len()})
            }
        },
        Entry::Dropped {
            first,
            last,
            reason,
        } => {
            serde_json::json!({"dropped": {"first": first, "last": last, "reason": reason.name()}})
        }
    }
}

fn value_json(v: &edgesync_core::Value) -> serde_json::Value {
    match v {
        edgesync_core::Value::Double(d) => serde_json::json!(d),
        edgesync_core::Value::Long(l) => serde_json::json!(l),
        edgesync_core::Value::String(s) => serde_json::json!(s),
        edgesync_core::Value::Bool(b) => serde_json::json!(b),
    }
}

/// `spool verify [--repair]`.
pub fn verify(cfg: &Config, repair: bool) -> Result<ExitCode, String> {
    let codec = Codec::new(Limits::default()).map_err(|e| e.to_string())?;
    let device = cfg.device_id().map_err(|e| e.to_string())?;
    let spool = if repair {
        Spool::open(&cfg.spool.dir, cfg.spool_config()).map_err(|e| match e {
            SpoolError::Db(db) if db.to_string().contains("lock") => format!(
                "spool {} is in use (stop the agent before repairing): {db}",
                cfg.spool.dir.display()
            ),
            e => e.to_string(),
        })?
    } else {
        open_read_only(cfg)?
    };
    let replica = ReplicaId::new(device, spool.meta().incarnation);
    let check = |body: &[u8]| {
        codec
            .decode_spool_record(body, Dot::new(replica.clone(), 1))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let report = spool.verify(check).map_err(|e| e.to_string())?;
    println!(
        "records {}  seqs {}..{}  next_seq {}  acked {}",
        report.records,
        report.first.map_or("-".into(), |s| s.to_string()),
        report.last.map_or("-".into(), |s| s.to_string()),
        report.next_seq,
        report.acked
    );
    for g in &report.gaps {
        println!("gap: seqs {}..={} missing", g.start, g.end);
    }
    for (seq, why) in &report.bad {
        println!("bad: seq {seq}: {why}");
    }
    if report.is_clean() {
        println!("clean");
        return Ok(ExitCode::SUCCESS);
    }
    if repair {
        let n = spool.repair(&report).map_err(|e| e.to_string())?;
        println!("repaired: {n} records replaced by dropped ranges (reason corrupt)");
        let again = spool.verify(check).map_err(|e| e.to_string())?;
        if again.bad.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    Ok(ExitCode::from(1))
}

/// `spool replay --from A [--to B]`.
pub fn replay(cfg: &Config, from: u64, to: Option<u64>) -> Result<ExitCode, String> {
    let spool = open_read_only(cfg)?;
    let to = to.unwrap_or(spool.meta().next_seq - 1);
    let codec = Codec::new(Limits::default()).map_err(|e| e.to_string())?;
    let up = uplink_config(cfg).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let stats = rt
        .block_on(crate::uplink::replay(
            &up,
            &spool,
            &codec,
            from,
            to,
            Duration::from_secs(60),
        ))
        .map_err(|e| e.to_string())?;
    println!(
        "replayed seqs {from}..={to}: {} batches, {} seqs, {} bytes",
        stats.batches, stats.seqs, stats.bytes
    );
    Ok(ExitCode::SUCCESS)
}
