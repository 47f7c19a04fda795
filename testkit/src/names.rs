//! Unique names for topics, groups and client ids, so tests never see each other's data.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `prefix` followed by the process id, a counter and the clock's nanoseconds: unique across
/// tests, processes and runs, and valid as a Kafka topic, group or MQTT client id.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A benchmark or test knob: environment variable `name` parsed as `T`, or `default` when it
/// is unset or does not parse.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `deploy/<path>` of this repository: what ops run, which tests use as shipped.
pub fn deploy(path: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Where `scripts/setup` keeps tools: `EDGESYNC_HOME`, by default `~/.cache/edgesync`.
pub fn tools_home() -> PathBuf {
    std::env::var_os("EDGESYNC_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/edgesync")
        })
}

/// Runs the outside client's Python (the virtualenv `scripts/setup` makes: PyPI's
/// confluent-kafka and fastavro; `EDGESYNC_PYTHON` overrides) with `args`; its standard output,
/// or an error carrying its standard error.
pub fn outside_python<I, S>(args: I) -> Result<Vec<u8>, crate::Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let python = std::env::var("EDGESYNC_PYTHON")
        .unwrap_or_else(|_| tools_home().join("venv/bin/python").display().to_string());
    let out = std::process::Command::new(&python)
        .args(args)
        .output()
        .map_err(crate::io(format!("run {python}")))?;
    if !out.status.success() {
        return Err(crate::Error::Command {
            command: python,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// The outside reader (`tests/python/read_outputs.py`: PyPI confluent-kafka + fastavro, only
/// the `.avsc` files) on the broker at `bootstrap`, waiting for at least `events` events, read
/// with `isolation` (`read_committed` or `read_uncommitted`): its JSON report (`events`: seqs
/// per device in topic order, `sums`: the sum of `pressure_kpa` per device, `state`: the
/// latest counter per key, `framings`: records per topic and framing).
pub fn read_outputs(
    bootstrap: &str,
    events: usize,
    isolation: &str,
) -> Result<serde_json::Value, crate::Error> {
    read_outputs_from(bootstrap, None, events, isolation, false)
}

/// [`read_outputs`], with the writer schemas from the Schema Registry at `registry` (its
/// Confluent-compatible API) instead of the `.avsc` files when given: confluent-kafka's own
/// `SchemaRegistryClient` and `AvroDeserializer`; with `completeness`, also the latest
/// completeness record per device (`completeness`: device → a line per incarnation).
pub fn read_outputs_from(
    bootstrap: &str,
    registry: Option<&str>,
    events: usize,
    isolation: &str,
    completeness: bool,
) -> Result<serde_json::Value, crate::Error> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let schemas: [std::ffi::OsString; 2] = match registry {
        Some(url) => ["--registry".into(), url.into()],
        None => [
            "--schemas".into(),
            root.join("schemas/avro").into_os_string(),
        ],
    };
    let mut args: Vec<std::ffi::OsString> = vec![
        root.join("tests/python/read_outputs.py").into_os_string(),
        "--bootstrap".into(),
        bootstrap.into(),
    ];
    args.extend(schemas);
    args.extend([
        "--events".into(),
        events.to_string().into(),
        "--isolation".into(),
        isolation.into(),
    ]);
    if completeness {
        args.push("--completeness".into());
    }
    let out = outside_python(args)?;
    serde_json::from_slice(&out).map_err(|e| crate::Error::Command {
        command: "read_outputs.py".into(),
        output: e.to_string(),
    })
}

/// Flips every bit of `n` bytes of the file at `path`, starting at `at` (a fraction of its
/// length): damage behind a program's back, as a failing disk does it.
pub fn flip_bytes(path: &std::path::Path, at: f64, n: usize) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let start = ((bytes.len() as f64 * at) as usize).min(bytes.len().saturating_sub(n));
    for b in bytes.iter_mut().skip(start).take(n) {
        *b = !*b;
    }
    std::fs::write(path, bytes)
}

/// The files in `dir` whose name `matches`, smallest first.
pub fn files_by_size(dir: &std::path::Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| matches(&e.file_name().to_string_lossy()))
        .map(|e| (e.metadata().map(|m| m.len()).unwrap_or(0), e.path()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}
