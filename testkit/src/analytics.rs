//! The analytics team's own tools, as `scripts/setup` builds them from Maven Central
//! (`tests/java`): Kafka's `kafka-console-consumer` and a Kafka Streams application, both
//! decoding edgesync's records with Apicurio's Avro deserializer in Confluent wire-format mode
//! (`apicurio.registry.as-confluent`), the writer schemas fetched from the registry by id.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::process::{Managed, ProcessSpec, Ready};
use crate::{io, Error, SchemaRegistry};

/// Where `scripts/setup` puts the tools: `EDGESYNC_ANALYTICS`, or `$EDGESYNC_HOME/analytics`.
fn home() -> PathBuf {
    std::env::var_os("EDGESYNC_ANALYTICS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::names::tools_home().join("analytics"))
}

/// `-cp` for the tools: the application's jar and every dependency.
fn class_path() -> Result<OsString, Error> {
    let home = home();
    if !home.join("analytics.jar").exists() {
        return Err(Error::Missing {
            program: format!("the analytics tools in {}", home.display()),
            hint: "run scripts/setup",
        });
    }
    let mut cp = home.join("analytics.jar").into_os_string();
    cp.push(":");
    cp.push(home.join("lib/*"));
    Ok(cp)
}

/// `kafka-console-consumer` reading `max` records of `topic` from the beginning with
/// `isolation` (`read_committed` or `read_uncommitted`), values decoded through `registry`:
/// one `key<TAB>value` line per record, the value as Avro's JSON rendering of the record.
pub fn console_consumer(
    bootstrap: &str,
    topic: &str,
    registry: &SchemaRegistry,
    max: usize,
    isolation: &str,
) -> Result<Vec<String>, Error> {
    let formatter = [
        "print.key=true".to_owned(),
        "key.separator=\t".to_owned(),
        "value.deserializer=io.apicurio.registry.serde.avro.AvroKafkaDeserializer".to_owned(),
        format!(
            "value.deserializer.apicurio.registry.url={}",
            registry.apicurio_url()
        ),
        "value.deserializer.apicurio.registry.as-confluent=true".to_owned(),
    ];
    let mut cmd = Command::new(crate::kafka::apache::java());
    cmd.args(["-Xmx256m", "-cp"])
        .arg(class_path()?)
        .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
        .args([
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--from-beginning",
        ])
        .args(["--isolation-level", isolation, "--timeout-ms", "30000"])
        .args(["--max-messages", &max.to_string()]);
    for p in &formatter {
        cmd.args(["--formatter-property", p]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io("run kafka-console-consumer"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: "kafka-console-consumer".into(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The Kafka Streams application `DeviceTotals` (tests/java): per device, the count of events
/// in `input` and the sum of their `pressure_kpa`, written to `output` as `count sum`.
/// Dropping it kills it.
#[derive(Debug)]
pub struct DeviceTotals {
    process: Managed,
    _dir: TempDir,
}

impl DeviceTotals {
    /// Starts the application (exactly-once v2) on `bootstrap` with application id `app`.
    pub fn start(
        bootstrap: &str,
        registry: &SchemaRegistry,
        input: &str,
        output: &str,
        app: &str,
    ) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("edgesync-streams-")
            .tempdir()
            .map_err(io("create streams dir"))?;
        let state = dir.path().join("state");
        let process = Managed::start(ProcessSpec {
            name: format!("kafka streams {app}"),
            program: crate::kafka::apache::java(),
            args: vec![
                "-Xmx256m".into(),
                "-cp".into(),
                class_path()?,
                "dev.edgesync.analytics.DeviceTotals".into(),
                bootstrap.into(),
                registry.apicurio_url().into(),
                input.into(),
                output.into(),
                app.into(),
                state.into_os_string(),
            ],
            cwd: dir.path().to_path_buf(),
            env: Vec::new(),
            log: dir.path().join("streams.log"),
            ready: Ready::Probe(Box::new(|| true)),
        })?;
        Ok(Self { process, _dir: dir })
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
