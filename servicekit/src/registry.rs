//! The Schema Registry client: the few calls of the Confluent REST API a service makes at
//! start-up to publish its output schemas (any registry that speaks it: Confluent's, Apicurio's
//! `/apis/ccompat/v7`, Karapace, Redpanda's).
//!
//! For each output topic the service ([`Registry::publish`]):
//! 1. sets the compatibility level of the topic's subject (`PUT /config/{subject}`,
//!    `[schema_registry] compatibility`, BACKWARD by default; for a subject that does not
//!    exist yet, right after step 3, as some registries keep no config for an unknown subject);
//! 2. asks whether the schema is compatible with the latest version registered
//!    (`POST /compatibility/subjects/{subject}/versions/latest`), and refuses to start with
//!    [`RegistryError::Incompatible`] if it is not;
//! 3. registers it (`POST /subjects/{subject}/versions`; the registry answers the id it already
//!    has for a schema registered before) and frames its records with that id;
//! 4. lists every version of the subject (`GET /subjects/{subject}/versions/{v}`), so that the
//!    service can read back records an earlier release wrote under an older id.
//!
//! Subjects follow the TopicNameStrategy ([`subject`]): `<topic>-value`. Every call is
//! blocking (`ureq`): services publish on a blocking thread, once, before they start.
//! Credentials are HTTP basic auth with the password read from a file; TLS verifies the
//! registry against the CA file when one is given (else against the Web PKI roots) and can
//! present a client certificate.

use std::path::PathBuf;
use std::time::Duration;

use edgesync_schemas::{Codec, MessageKind};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::security::SecurityFiles;

/// `[schema_registry]`: present means records on analytics-facing topics are framed in the
/// Confluent wire format with the ids this registry assigns; absent means single-object.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The Confluent-compatible API's base, e.g. `http://registry:8081` (Confluent, Karapace)
    /// or `http://registry:8080/apis/ccompat/v7` (Apicurio).
    pub url: String,
    /// The compatibility level set on each of the service's subjects.
    #[serde(default = "default_compatibility")]
    pub compatibility: String,
    /// HTTP basic auth user.
    pub username: Option<String>,
    /// File holding the basic auth password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) the registry's certificate must chain to (`https` URLs).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for a registry that asks for one.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Deadline of each request.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

impl RegistrySection {
    /// The registry at `url`, every other setting at its default.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            compatibility: default_compatibility(),
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            timeout_ms: default_timeout(),
        }
    }
}

impl RegistrySection {
    fn files(&self) -> SecurityFiles<'_> {
        SecurityFiles {
            username: self.username.as_deref(),
            password_file: self.password_file.as_deref(),
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }
}

fn default_compatibility() -> String {
    "BACKWARD".into()
}
fn default_timeout() -> u64 {
    10_000
}

/// The TopicNameStrategy subject of a topic's values.
pub fn subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A PEM file named in `[schema_registry]` could not be parsed.
    #[error("schema registry: {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// `[schema_registry]` names a file that cannot be read, or only half of a pair.
    #[error("schema registry: {0}")]
    Config(#[from] ConfigError),
    /// No answer (connection refused, TLS failed, timed out).
    #[error("schema registry {url}: {source}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// The transport's error.
        source: Box<ureq::Error>,
    },
    /// An answer other than success.
    #[error("schema registry: {what} answered {status}: {body}")]
    Refused {
        /// The call.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The registry's explanation.
        body: String,
    },
    /// The schema breaks the subject's compatibility level against its latest version.
    #[error("schema registry: the schema for subject {subject} is not {level}-compatible with its latest version: {detail}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// The level in force.
        level: String,
        /// The registry's reasons, if it gave any.
        detail: String,
    },
    /// A version the registry holds for one of the service's subjects that this release cannot
    /// read records of (not an Avro schema of the same record, or not resolvable into ours).
    #[error("schema registry: subject {subject} holds schema id {id}, which this release cannot read: {detail}")]
    Version {
        /// The subject.
        subject: String,
        /// The registry's id of that version.
        id: u32,
        /// Why.
        detail: String,
    },
    /// The blocking task publishing the schemas panicked or was cancelled.
    #[error("schema registry: publishing the output schemas was interrupted: {0}")]
    Interrupted(String),
    /// An answer that is not what the API specifies.
    #[error("schema registry: {what}: unexpected answer {body:?}")]
    Answer {
        /// The call.
        what: String,
        /// What came back.
        body: String,
    },
}

/// One version of a subject.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Version {
    /// The registry's id of the schema (what the wire format carries).
    pub id: u32,
    /// The schema's JSON.
    pub schema: String,
}

/// What [`Registry::publish`] did for one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The id of the schema given (new or already registered).
    pub id: u32,
    /// Every version of the subject, the given one included.
    pub versions: Vec<Version>,
}

/// A client of one registry.
#[derive(Debug)]
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
    compatibility: String,
}

impl Registry {
    /// A client configured by `s` (reads the password, CA and client certificate files).
    pub fn new(s: &RegistrySection) -> Result<Self, RegistryError> {
        let files = s.files();
        let auth = files.credentials()?.map(|(user, pass)| basic(&user, &pass));
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(s.timeout_ms)))
            .http_status_as_error(false)
            .tls_config(tls(&files)?)
            .build()
            .into();
        Ok(Self {
            agent,
            base: s.url.trim_end_matches('/').to_owned(),
            auth,
            compatibility: s.compatibility.clone(),
        })
    }

    /// Steps 1–4 of the module header for `schema` (Avro JSON) under `subject`.
    pub fn publish(&self, subject: &str, schema: &str) -> Result<Published, RegistryError> {
        let exists = match self.set_compatibility(subject) {
            Ok(()) => true,
            Err(RegistryError::Refused { status: 404, .. }) => false,
            Err(e) => return Err(e),
        };
        let body = serde_json::json!({ "schema": schema });
        if exists {
            self.check(subject, &body)?;
        }
        let registered = self.call("POST", &format!("/subjects/{subject}/versions"), Some(body));
        let id = match registered {
            Ok(answer) => id_of(&answer, "register")?,
            Err(RegistryError::Refused {
                status: 409, body, ..
            }) => return Err(self.incompatible(subject, body)),
            Err(e) => return Err(e),
        };
        if !exists {
            self.set_compatibility(subject)?;
        }
        Ok(Published {
            id,
            versions: self.versions(subject)?,
        })
    }

    /// `PUT /config/{subject}` with the configured level.
    fn set_compatibility(&self, subject: &str) -> Result<(), RegistryError> {
        let body = serde_json::json!({ "compatibility": self.compatibility });
        self.call("PUT", &format!("/config/{subject}"), Some(body))
            .map(drop)
    }

    /// [`RegistryError::Incompatible`] unless the registry finds `body`'s schema compatible
    /// with the latest version of `subject` (or the subject has no version yet).
    fn check(&self, subject: &str, body: &serde_json::Value) -> Result<(), RegistryError> {
        let path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
        match self.call("POST", &path, Some(body.clone())) {
            Ok(answer) if answer["is_compatible"] == serde_json::Value::Bool(true) => Ok(()),
            Ok(answer) => Err(self.incompatible(
                subject,
                answer
                    .get("messages")
                    .map_or_else(String::new, |m| m.to_string()),
            )),
            Err(RegistryError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn incompatible(&self, subject: &str, detail: String) -> RegistryError {
        RegistryError::Incompatible {
            subject: subject.to_owned(),
            level: self.compatibility.clone(),
            detail,
        }
    }

    /// Every version of `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Result<Vec<Version>, RegistryError> {
        let list = self.call("GET", &format!("/subjects/{subject}/versions"), None)?;
        let numbers: Vec<u64> =
            serde_json::from_value(list.clone()).map_err(|_| RegistryError::Answer {
                what: format!("versions of {subject}"),
                body: list.to_string(),
            })?;
        numbers
            .into_iter()
            .map(|v| {
                let what = format!("version {v} of {subject}");
                let answer =
                    self.call("GET", &format!("/subjects/{subject}/versions/{v}"), None)?;
                serde_json::from_value(answer.clone()).map_err(|_| RegistryError::Answer {
                    what,
                    body: answer.to_string(),
                })
            })
            .collect()
    }

    /// One call; the JSON answer of a 2xx, else [`RegistryError::Refused`].
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {path}");
        let content = "application/vnd.schemaregistry.v1+json";
        let sent = match (method, body) {
            ("GET", _) => self.with_auth(self.agent.get(&url)).call(),
            ("PUT", Some(b)) => self
                .with_auth(self.agent.put(&url))
                .header("content-type", content)
                .send(b.to_string()),
            (_, b) => self
                .with_auth(self.agent.post(&url))
                .header("content-type", content)
                .send(b.map(|b| b.to_string()).unwrap_or_default()),
        };
        let mut response = sent.map_err(|e| RegistryError::Unreachable {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(RegistryError::Refused {
                what,
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|_| RegistryError::Answer { what, body: text })
    }

    fn with_auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }
}

fn id_of(answer: &serde_json::Value, what: &str) -> Result<u32, RegistryError> {
    answer["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| RegistryError::Answer {
            what: what.to_owned(),
            body: answer.to_string(),
        })
}

/// The `Authorization` header of HTTP basic auth.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// The TLS settings of `f`: its CA file as the only roots when given, its client
/// certificate.
fn tls(f: &SecurityFiles<'_>) -> Result<ureq::tls::TlsConfig, RegistryError> {
    use ureq::tls::{ClientCert, PrivateKey, RootCerts, TlsConfig};
    let bad = |path: Option<&std::path::Path>| {
        let path = path.map(PathBuf::from).unwrap_or_default();
        move |e: ureq::Error| RegistryError::File {
            path,
            detail: e.to_string(),
        }
    };
    // The provider rumqttc's TLS uses too (the workspace compiles rustls with it alone).
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut b = TlsConfig::builder().unversioned_rustls_crypto_provider(provider);
    if let Some(ca) = f.ca()? {
        let certs = certificates(&ca).map_err(bad(f.ca_file))?;
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    if let Some((cert, key)) = f.client_auth()? {
        let chain = certificates(&cert).map_err(bad(f.client_cert_file))?;
        let key = PrivateKey::from_pem(&key).map_err(bad(f.client_key_file))?;
        b = b.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

/// Every certificate in a PEM text.
fn certificates(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, ureq::Error> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect()
}

/// Publishes the current schema of each output's kind under its topic's subject and makes
/// `codec` frame those outputs with the ids the registry gave, reading every older version's
/// id too. Blocking: run it off the async threads, once, before the service starts.
pub fn frame_outputs(
    section: &RegistrySection,
    codec: &mut Codec,
    outputs: &[(&str, MessageKind)],
) -> Result<(), RegistryError> {
    let registry = Registry::new(section)?;
    for &(topic, kind) in outputs {
        let subject = subject(topic);
        let published = registry.publish(&subject, kind.avsc())?;
        for v in &published.versions {
            codec
                .register_confluent_writer(v.id, kind, &v.schema)
                .map_err(|e| RegistryError::Version {
                    subject: subject.clone(),
                    id: v.id,
                    detail: e.to_string(),
                })?;
        }
        codec.use_registry_id(kind, published.id);
        tracing::info!(%subject, id = published.id, versions = published.versions.len(), "output schema registered");
    }
    Ok(())
}

/// [`frame_outputs`] on a blocking thread when `section` is set (outputs named by topic); the
/// codec as it is when not.
pub async fn framed(
    mut codec: Codec,
    section: Option<RegistrySection>,
    outputs: Vec<(String, MessageKind)>,
) -> Result<Codec, RegistryError> {
    let Some(section) = section else {
        return Ok(codec);
    };
    tokio::task::spawn_blocking(move || {
        let outputs: Vec<(&str, MessageKind)> =
            outputs.iter().map(|(t, k)| (t.as_str(), *k)).collect();
        frame_outputs(&section, &mut codec, &outputs).map(|()| codec)
    })
    .await
    .map_err(|e| RegistryError::Interrupted(e.to_string()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// One HTTP exchange on a local socket: the request's head, answered with `status`.
    fn serve_once(status: u16) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let body = r#"{"message":"refused","error_code":50001}"#;
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).unwrap();
            head
        });
        (url, t)
    }

    #[test]
    fn credentials_go_as_basic_auth_with_the_password_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let (url, head) = serve_once(500);
        let mut s = RegistrySection::at(url);
        s.username = Some("edgesync".into());
        s.password_file = Some(password);
        let e = Registry::new(&s)
            .unwrap()
            .versions("edgesync.events-value")
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Refused { status: 500, .. }),
            "{e}"
        );
        let head = head.join().unwrap().to_ascii_lowercase();
        // base64("edgesync:s3cret")
        assert!(
            head.contains("authorization: basic zwrnzxn5bmm6cznjcmv0\r\n"),
            "{head}"
        );
        assert!(
            head.starts_with("get /subjects/edgesync.events-value/versions "),
            "{head}"
        );
    }

    #[test]
    fn half_a_pair_is_refused() {
        let mut s = RegistrySection::at("http://127.0.0.1:1");
        s.password_file = Some("/nonexistent".into());
        assert!(matches!(Registry::new(&s), Err(RegistryError::Config(_))));
        let mut s = RegistrySection::at("http://127.0.0.1:1");
        s.client_cert_file = Some("/nonexistent".into());
        assert!(matches!(Registry::new(&s), Err(RegistryError::Config(_))));
    }
}
