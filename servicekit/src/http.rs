//! The one HTTP client of the workspace (`ureq`, plain HTTP to local endpoints): the agent's
//! CLI asking the running agent for its status, and the test kit, the benchmarks and
//! `edgesync-local` talking to the services and to Prometheus. A status other than 2xx is an
//! answer, not an error; an error is a connection that failed or timed out.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Every header as `name: value` (names lower case), one per line.
    pub head: String,
    /// The body as text.
    pub body: String,
}

/// One request to `http://{addr}{path}`, with a body of `content_type` when given, within
/// `timeout` for the whole exchange.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> io::Result<Answer> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let sent = match (method, body) {
        ("GET", None) => agent.get(&url).call(),
        ("POST", Some((content_type, bytes))) => agent
            .post(&url)
            .header("content-type", content_type)
            .send(bytes),
        ("POST", None) => agent.post(&url).send_empty(),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{method} with a body of {:?}", body.map(|b| b.0)),
            ))
        }
    };
    let mut response = sent.map_err(io::Error::other)?;
    let head = response
        .headers()
        .iter()
        .map(|(name, value)| format!("{}: {}\n", name.as_str(), value.to_str().unwrap_or("")))
        .collect();
    Ok(Answer {
        status: response.status().as_u16(),
        head,
        body: response
            .body_mut()
            .read_to_string()
            .map_err(io::Error::other)?,
    })
}

/// `GET path` within 5 s: status and body.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    request(addr, "GET", path, None, Duration::from_secs(5)).map(|a| (a.status, a.body))
}
