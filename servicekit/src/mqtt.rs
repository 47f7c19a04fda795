//! MQTT client security shared by the services: TLS (optionally mutual) and credentials, read
//! from the files a configuration names.

use rumqttc::{MqttOptions, Transport};

use crate::config::ConfigError;
use crate::security::SecurityFiles;

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

impl MqttSecurity {
    /// Reads the files: TLS when a CA file is set (then with the client certificate, if
    /// any), credentials when a user name is.
    pub fn load(f: &SecurityFiles<'_>) -> Result<Self, ConfigError> {
        let tls = match f.ca()? {
            None => None,
            Some(ca) => Some(MqttTls {
                ca,
                client_auth: f.client_auth()?,
            }),
        };
        Ok(Self {
            tls,
            credentials: f.credentials()?,
        })
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
