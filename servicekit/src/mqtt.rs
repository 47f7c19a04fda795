//! MQTT client security shared by the services: TLS (optionally mutual) and credentials, read
//! from the files a configuration names.

use std::path::{Path, PathBuf};

use rumqttc::{MqttOptions, Transport};

use crate::config::ConfigError;

/// TLS material, PEM-encoded.
#[derive(Clone)]
pub struct MqttTls {
    /// CA certificates that may sign the broker's certificate.
    pub ca: Vec<u8>,
    /// Client certificate and key, for mutual TLS.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for MqttTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("MqttTls")
            .field("ca_bytes", &self.ca.len())
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

/// How a service authenticates to its broker.
#[derive(Clone, Default)]
pub struct MqttSecurity {
    /// TLS; `None` is plain TCP.
    pub tls: Option<MqttTls>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for MqttSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSecurity")
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

/// Paths a configuration names.
#[derive(Clone, Debug, Default)]
pub struct MqttSecurityFiles<'a> {
    /// User name.
    pub username: Option<&'a str>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<&'a Path>,
    /// PEM CA file: TLS when set.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate (mutual TLS, with `client_key_file`).
    pub client_cert_file: Option<&'a Path>,
    /// PEM client key.
    pub client_key_file: Option<&'a Path>,
}

fn read(p: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(p).map_err(|source| ConfigError::Read {
        path: PathBuf::from(p),
        source,
    })
}

impl MqttSecurity {
    /// Reads the files.
    pub fn load(f: &MqttSecurityFiles<'_>) -> Result<Self, ConfigError> {
        let tls = match f.ca_file {
            None => None,
            Some(ca) => Some(MqttTls {
                ca: read(ca)?,
                client_auth: match (f.client_cert_file, f.client_key_file) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid(
                            "a client certificate and its key go together".into(),
                        ))
                    }
                },
            }),
        };
        let credentials = match (f.username, f.password_file) {
            (Some(user), Some(p)) => {
                let pass = String::from_utf8_lossy(&read(p)?).trim_end().to_owned();
                Some((user.to_owned(), pass))
            }
            (Some(user), None) => Some((user.to_owned(), String::new())),
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "a password file without a user name".into(),
                ))
            }
            (None, None) => None,
        };
        Ok(Self { tls, credentials })
    }

    /// Applies TLS and credentials to MQTT 5 options.
    pub fn apply_v5(&self, opts: &mut rumqttc::v5::MqttOptions) {
        if let Some((user, pass)) = &self.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        if let Some(t) = &self.tls {
            opts.set_transport(Transport::tls(t.ca.clone(), t.client_auth.clone(), None));
        }
    }

    /// Applies TLS and credentials to `opts`.
    pub fn apply(&self, opts: &mut MqttOptions) {
        if let Some((user, pass)) = &self.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        if let Some(t) = &self.tls {
            opts.set_transport(Transport::tls(t.ca.clone(), t.client_auth.clone(), None));
        }
    }
}
