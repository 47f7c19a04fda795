//! Typed configuration in three layers: a TOML file, then environment variables, then
//! `--set path=value` flags, each overriding the one before. Every layer is deserialized
//! into the service's own structs, which use `#[serde(deny_unknown_fields)]`: a misspelt
//! field, variable or flag fails start-up with its name instead of being ignored.
//!
//! Environment variables are `<PREFIX><SECTION>__<FIELD>` (upper case, `__` between path
//! parts), e.g. `EDGESYNC_AGENT__UPLINK__PORT=8883`. A value is read as TOML when it parses as
//! a TOML value (numbers, booleans, arrays, quoted strings) and as a plain string otherwise.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, or a malformed variable or flag.
    #[error("{origin}: {message}")]
    Syntax {
        /// File, environment variable or flag.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Well-formed but wrong (unknown field, wrong type, missing value, bad value).
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A service's whole configuration: deserialized from the three layers, then checked for what
/// serde cannot state (ranges, names, settings that only work together).
pub trait ServiceConfig: DeserializeOwned {
    /// The prefix of its environment variables, e.g. `EDGESYNC_AGENT__`.
    const ENV_PREFIX: &'static str;

    /// Refuses a configuration that deserialized but cannot be used, saying which setting.
    fn check(&self) -> Result<(), ConfigError>;

    /// Loads `file` (if any), then the `env` pairs under [`Self::ENV_PREFIX`], then `sets`
    /// (`path=value`), and checks the result.
    fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let cfg: Self = load(file, env, Self::ENV_PREFIX, sets)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// A configuration file's text alone (no environment, no flags), checked; `origin` names
    /// it in errors.
    fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = load_text(Some((text, origin)), [], Self::ENV_PREFIX, &[])?;
        cfg.check()?;
        Ok(cfg)
    }
}

/// Loads `file` (if any), then the `env` pairs whose name starts with `prefix`, then `sets`
/// (`path=value`), and deserializes the result.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
    sets: &[String],
) -> Result<T, ConfigError> {
    let text = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            Some((text, path.display().to_string()))
        }
        None => None,
    };
    let file = text
        .as_ref()
        .map(|(t, origin)| (t.as_str(), origin.as_str()));
    load_text(file, env, prefix, sets)
}

/// [`load`] with the file's text already read: `file` is its text and the name errors give it.
pub fn load_text<T: DeserializeOwned>(
    file: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
    sets: &[String],
) -> Result<T, ConfigError> {
    let mut root = match file {
        Some((text, origin)) => text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?,
        None => toml::Table::new(),
    };
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    env.sort(); // the same environment gives the same result, whatever its order
    for (k, v) in env {
        let path: Vec<String> = k[prefix.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        set(&mut root, &path, &v, &k)?;
    }
    for s in sets {
        let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Syntax {
            origin: format!("--set {s}"),
            message: "expected path=value".into(),
        })?;
        let path: Vec<String> = k.trim().split('.').map(str::to_owned).collect();
        set(&mut root, &path, v.trim(), &format!("--set {s}"))?;
    }
    toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
}

/// Sets `path` in `root` to `raw` (TOML if it parses as a value, else a string).
fn set(
    root: &mut toml::Table,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let bad = |message: &str| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: message.to_owned(),
    };
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty path"))?;
    if path.iter().any(String::is_empty) {
        return Err(bad("empty path part"));
    }
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| bad(&format!("{p} is not a section")))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        a: S,
        #[serde(default)]
        list: Vec<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct S {
        port: u16,
        host: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[a]\nport = 1\nhost = \"h\"\n").unwrap();
        let c: C = load(
            Some(&p),
            env(&[
                ("X__A__PORT", "2"),
                ("X__LIST", "[\"a\", \"b\"]"),
                ("Y__A__PORT", "9"),
            ]),
            "X__",
            &["a.host=broker.local".into()],
        )
        .unwrap();
        assert_eq!((c.a.port, c.a.host.as_str()), (2, "broker.local"));
        assert_eq!(c.list, ["a", "b"]);
        let c: C = load(
            Some(&p),
            env(&[("X__A__PORT", "2")]),
            "X__",
            &["a.port=3".into()],
        )
        .unwrap();
        assert_eq!(c.a.port, 3);
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_refused_with_their_name() {
        let base = ["a.port=1".to_string(), "a.host=h".to_string()];
        let e = load::<C>(None, env(&[("X__A__PROT", "1")]), "X__", &base).unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let mut sets = base.to_vec();
        sets.push("a.hots=x".into());
        assert!(load::<C>(None, [], "X__", &sets)
            .unwrap_err()
            .to_string()
            .contains("hots"));
        assert!(load::<C>(None, [], "X__", &["nonsense".into()])
            .unwrap_err()
            .to_string()
            .contains("path=value"));
        let e = load::<C>(None, [], "X__", &["a.port=70000".into(), "a.host=h".into()]);
        assert!(e.unwrap_err().to_string().contains("port"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[a\n").unwrap();
        assert!(matches!(
            load::<C>(Some(&p), [], "X__", &[]),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
