//! The TLS and credential files a service's configuration names (for its MQTT broker, for
//! the Schema Registry), read once at start-up with the rules that pair them: a password file
//! needs a user name, a client certificate needs its key. The password is the file's content
//! without its trailing newline.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// A client certificate chain and its private key, PEM.
pub type ClientAuth = (Vec<u8>, Vec<u8>);

/// Paths a configuration names.
#[derive(Clone, Debug, Default)]
pub struct SecurityFiles<'a> {
    /// User name.
    pub username: Option<&'a str>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<&'a Path>,
    /// PEM CA file.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate (mutual TLS, with `client_key_file`).
    pub client_cert_file: Option<&'a Path>,
    /// PEM client key.
    pub client_key_file: Option<&'a Path>,
}

impl SecurityFiles<'_> {
    /// User name and password, if a user name is set.
    pub fn credentials(&self) -> Result<Option<(String, String)>, ConfigError> {
        match (self.username, self.password_file) {
            (Some(user), Some(p)) => {
                let pass = String::from_utf8_lossy(&read(p)?).trim_end().to_owned();
                Ok(Some((user.to_owned(), pass)))
            }
            (Some(user), None) => Ok(Some((user.to_owned(), String::new()))),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "a password file without a user name".into(),
            )),
            (None, None) => Ok(None),
        }
    }

    /// The CA file's PEM, if one is set.
    pub fn ca(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.ca_file.map(read).transpose()
    }

    /// The client certificate's and key's PEM, if they are set.
    pub fn client_auth(&self) -> Result<Option<ClientAuth>, ConfigError> {
        match (self.client_cert_file, self.client_key_file) {
            (Some(c), Some(k)) => Ok(Some((read(c)?, read(k)?))),
            (None, None) => Ok(None),
            _ => Err(ConfigError::Invalid(
                "a client certificate and its key go together".into(),
            )),
        }
    }
}

fn read(p: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(p).map_err(|source| ConfigError::Read {
        path: PathBuf::from(p),
        source,
    })
}
