//! The metrics and health endpoint: a small synchronous HTTP/1.1 server (`tiny_http`) whose
//! requests are answered on one named thread, `n{id}-metrics`.
//!
//! | path       | answer                                                                  |
//! |------------|-------------------------------------------------------------------------|
//! | `/metrics` | 200, every series in the Prometheus text format                         |
//! | `/livez`   | 200 `ok` while the process serves                                       |
//! | `/readyz`  | 200 `ok` when ready (see [`super::readiness`]), else 503 and the reason |
//!
//! Anything else is 404; a method other than GET or HEAD is 405.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};

use super::{Metrics, CONTENT_TYPE};

/// How long `/readyz` waits for the applier to reach the commit index it saw.
pub const READY_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the endpoint answers from.
pub struct Endpoints {
    /// The series of `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `/readyz`: `Ok` when ready, else a one-line reason.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpStartError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {address}: {reason}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        reason: String,
    },
    /// The thread could not be spawned.
    #[error("spawning the metrics thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A running endpoint. Dropping it stops it.
pub struct MetricsServer {
    server: Arc<Server>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `address` and answers on a thread named `thread_name`.
    pub fn start(
        address: SocketAddr,
        thread_name: String,
        endpoints: Endpoints,
    ) -> Result<MetricsServer, HttpStartError> {
        let server = Server::http(address).map_err(|error| HttpStartError::Bind {
            address,
            reason: error.to_string(),
        })?;
        let local_addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| HttpStartError::Bind {
                address,
                reason: "not an IP listener".into(),
            })?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || run(&serving, &endpoints))
            .map_err(HttpStartError::Spawn)?;
        tracing::info!(listen = %local_addr, "serving metrics and health over HTTP");
        Ok(MetricsServer {
            server,
            local_addr,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops answering and joins the thread; idempotent.
    pub fn shutdown(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(server: &Server, endpoints: &Endpoints) {
    // `recv` fails or returns nothing more once `unblock` was called.
    while let Ok(request) = server.recv() {
        let path = request.url().split('?').next().unwrap_or("");
        let (status, body, content_type) =
            if !matches!(request.method(), Method::Get | Method::Head) {
                (405, "only GET and HEAD\n".to_string(), "text/plain")
            } else {
                match path {
                    "/metrics" => (200, endpoints.metrics.encode(), CONTENT_TYPE),
                    "/livez" => (200, "ok\n".to_string(), "text/plain"),
                    "/readyz" => match (endpoints.ready)() {
                        Ok(()) => (200, "ok\n".to_string(), "text/plain"),
                        Err(reason) => (503, format!("not ready: {reason}\n"), "text/plain"),
                    },
                    _ => (
                        404,
                        "not found: try /metrics, /livez or /readyz\n".to_string(),
                        "text/plain",
                    ),
                }
            };
        // The whole body is in memory: always send its length, never chunks (tiny_http chunks
        // bodies above 32 KiB by default, which simple scrapers and health probes mis-read).
        let mut response = Response::from_string(body)
            .with_status_code(status)
            .with_chunked_threshold(usize::MAX);
        if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
            response = response.with_header(header);
        }
        if let Err(error) = request.respond(response) {
            tracing::debug!(error = %error, "metrics request: the answer could not be sent");
        }
    }
}
