//! TLS for the client port (rustls; TLS 1.2 and 1.3 only, aws-lc-rs for the cryptography, with post-quantum hybrid key exchange).
//!
//! - [`ServerTls`]: a node's certificate and key, and optionally the CA whose client
//!   certificates it accepts ([`ClientAuth`]). The files are **re-read when they change on
//!   disk** ([`ServerTls::reload_if_changed`], which the server calls about once a second, and
//!   [`ServerTls::reload`] for SIGHUP): new connections get the new configuration, open ones
//!   keep theirs. A new configuration that does not load (a half-written file, a key that
//!   does not match the certificate) is refused with a logged reason, and the old one stays.
//! - [`ClientTls`]: the CA a client trusts for the nodes' certificates, and optionally its
//!   own certificate and key for nodes that ask for one.
//!
//! Both wrap rustls configurations; the server drives a `rustls::ServerConnection` as a state
//! machine over its non-blocking sockets (`server/connection.rs`), the blocking client a
//! `rustls::ClientConnection` shared by its writer and receiver threads
//! (`client/connection.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::log;

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsError {
    /// Which file or step.
    pub what: &'static str,
    /// The file concerned (empty if none).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl TlsError {
    fn new(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
        TlsError {
            what,
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Whether a node asks clients for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A client may present a certificate from the trusted CA; one without is served too.
    Optional,
    /// Every client must present a certificate from the trusted CA (etcd's
    /// `--client-cert-auth`).
    Required,
}

/// Where a node's TLS files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates that client certificates must chain to (PEM); needed unless
    /// `client_auth` is [`ClientAuth::None`].
    pub trusted_ca: Option<PathBuf>,
    /// Whether clients must, may or need not present certificates.
    pub client_auth: ClientAuth,
}

/// What identifies a version of a file on disk.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsError::new("cannot read certificates from", path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new("cannot parse certificates in", path, error))?;
    if certificates.is_empty() {
        return Err(TlsError::new("no certificate in", path, "empty PEM file"));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| TlsError::new("cannot read a private key from", path, error))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::new("unusable CA certificate in", path, error))?;
    }
    Ok(Arc::new(roots))
}

impl ServerTlsFiles {
    /// Loads the files into a rustls configuration.
    fn load(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new("TLS versions", Path::new(""), error))?;
        let builder = match (self.client_auth, &self.trusted_ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(TlsError::new(
                    "client certificate authentication needs a trusted CA file",
                    Path::new(""),
                    "give --trusted-ca-file",
                ))
            }
            (auth, Some(ca)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|error| TlsError::new("client verifier for", ca, error))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certificates(&self.cert)?, private_key(&self.key)?)
            .map_err(|error| {
                TlsError::new("certificate and key do not match:", &self.key, error)
            })?;
        config.alpn_protocols = Vec::new();
        Ok(config)
    }

    fn stamps(&self) -> Vec<Stamp> {
        let mut stamps = vec![stamp(&self.cert), stamp(&self.key)];
        if let Some(ca) = &self.trusted_ca {
            stamps.push(stamp(ca));
        }
        stamps
    }
}

/// A node's TLS configuration, re-read when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' modification times and sizes as last loaded (or last refused).
    stamps: Mutex<Vec<Stamp>>,
}

impl ServerTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn new(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let stamps = files.stamps();
        let config = files.load()?;
        Ok(ServerTls {
            files,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read())
    }

    /// Re-reads the files if any changed since they were last read. Returns whether a new
    /// configuration was taken.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = self.files.stamps();
        {
            let mut last = self.stamps.lock();
            if *last == stamps {
                return false;
            }
            *last = stamps;
        }
        self.reload()
    }

    /// Re-reads the files now (SIGHUP). On failure the current configuration stays, and the
    /// reason is logged.
    pub fn reload(&self) -> bool {
        match self.files.load() {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                log::info(
                    "TLS certificate reloaded",
                    &[("cert", &self.files.cert.display())],
                );
                true
            }
            Err(error) => {
                log::error(
                    "new TLS certificate refused; keeping the current one",
                    &[("error", &error)],
                );
                false
            }
        }
    }
}

/// A client's TLS configuration: whom it trusts, and what it presents if asked.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM); presents `cert_and_key` (PEM files) to nodes
    /// that ask for a client certificate.
    pub fn new(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new("TLS versions", Path::new(""), error))?
            .with_root_certificates(roots(ca)?);
        let config = match cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|error| TlsError::new("certificate and key do not match:", key, error))?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// A TLS session to `host` (a DNS name or IP address the node's certificate must name).
    pub(crate) fn connect(&self, host: &str) -> Result<rustls::ClientConnection, String> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|error| format!("{host:?} is not a valid TLS server name: {error}"))?;
        rustls::ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|error| format!("cannot start TLS: {error}"))
    }
}
