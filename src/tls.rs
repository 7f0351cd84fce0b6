//! TLS for the client and peer ports (rustls; TLS 1.2 and 1.3 only, aws-lc-rs for the
//! cryptography, with post-quantum hybrid key exchange).
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
//! - [`PeerTls`]: mutual TLS between nodes — every node presents its certificate and checks
//!   the other's against the peer CA, and an accepted peer's certificate must carry one of the
//!   allowed names and the IP address the cluster configuration gives the node id it claims.
//!
//! All wrap rustls configurations; the server drives a `rustls::ServerConnection` as a state
//! machine over its non-blocking sockets (`server/connection.rs`), the blocking client a
//! `rustls::ClientConnection` shared by its writer and receiver threads
//! (`client/connection.rs`).

use std::net::IpAddr;
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

/// A configuration loaded from files, re-loaded when they change.
#[derive(Debug)]
struct Watched<T> {
    current: RwLock<T>,
    /// The files' modification times and sizes as last loaded (or last refused).
    stamps: Mutex<Vec<Stamp>>,
    /// What the configuration is, for the log.
    what: &'static str,
}

impl<T> Watched<T> {
    fn new(current: T, stamps: Vec<Stamp>, what: &'static str) -> Watched<T> {
        Watched {
            current: RwLock::new(current),
            stamps: Mutex::new(stamps),
            what,
        }
    }

    /// Loads anew if `stamps` differ from the last ones seen.
    fn reload_if_changed(
        &self,
        stamps: Vec<Stamp>,
        cert: &Path,
        load: impl FnOnce() -> Result<T, TlsError>,
    ) -> bool {
        {
            let mut last = self.stamps.lock();
            if *last == stamps {
                return false;
            }
            *last = stamps;
        }
        self.reload(cert, load)
    }

    /// Loads anew; on failure keeps the current configuration and logs why.
    fn reload(&self, cert: &Path, load: impl FnOnce() -> Result<T, TlsError>) -> bool {
        match load() {
            Ok(loaded) => {
                *self.current.write() = loaded;
                log::info(
                    "TLS certificate reloaded",
                    &[("for", &self.what), ("cert", &cert.display())],
                );
                true
            }
            Err(error) => {
                log::error(
                    "new TLS certificate refused; keeping the current one",
                    &[("for", &self.what), ("error", &error)],
                );
                false
            }
        }
    }
}

/// A node's TLS configuration, re-read when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    config: Watched<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn new(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let stamps = files.stamps();
        let config = Arc::new(files.load()?);
        Ok(ServerTls {
            files,
            config: Watched::new(config, stamps, "clients"),
        })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.current.read())
    }

    /// Re-reads the files if any changed since they were last read. Returns whether a new
    /// configuration was taken.
    pub fn reload_if_changed(&self) -> bool {
        let files = &self.files;
        self.config
            .reload_if_changed(files.stamps(), &files.cert, || files.load().map(Arc::new))
    }

    /// Re-reads the files now (SIGHUP). On failure the current configuration stays, and the
    /// reason is logged.
    pub fn reload(&self) -> bool {
        let files = &self.files;
        self.config
            .reload(&files.cert, || files.load().map(Arc::new))
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

/// Where a node's peer TLS files are. Peer TLS is always mutual.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// The node's peer certificate (PEM): used both to accept and to dial, so it must name
    /// the node's peer IP address (an IP SAN) — the dialer checks that, the acceptor binds
    /// the claimed node id to it.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) every peer certificate must chain to.
    pub trusted_ca: PathBuf,
    /// Names (common name or DNS SAN) a peer's certificate must carry one of; empty: any
    /// certificate from the CA (like etcd's `--peer-cert-allowed-cn`).
    pub allowed_names: Vec<String>,
}

impl PeerTlsFiles {
    fn load(&self) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), TlsError> {
        let roots = roots(&self.trusted_ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|error| TlsError::new("peer verifier for", &self.trusted_ca, error))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new("TLS versions", Path::new(""), error))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certificates(&self.cert)?, private_key(&self.key)?)
            .map_err(|error| {
                TlsError::new("certificate and key do not match:", &self.key, error)
            })?;
        // Peer connections are one-way: the dialer never reads, so tickets would only sit in
        // its socket.
        server.send_tls13_tickets = 0;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new("TLS versions", Path::new(""), error))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certificates(&self.cert)?, private_key(&self.key)?)
            .map_err(|error| {
                TlsError::new("certificate and key do not match:", &self.key, error)
            })?;
        Ok((Arc::new(server), Arc::new(client)))
    }

    fn stamps(&self) -> Vec<Stamp> {
        vec![stamp(&self.cert), stamp(&self.key), stamp(&self.trusted_ca)]
    }
}

/// A node's mutual TLS for its peer port, re-read when its files change.
#[derive(Debug)]
pub struct PeerTls {
    files: PeerTlsFiles,
    configs: Watched<(Arc<ServerConfig>, Arc<ClientConfig>)>,
}

impl PeerTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn new(files: PeerTlsFiles) -> Result<PeerTls, TlsError> {
        let stamps = files.stamps();
        let configs = files.load()?;
        Ok(PeerTls {
            files,
            configs: Watched::new(configs, stamps, "peers"),
        })
    }

    /// A server session for an accepted peer connection.
    pub(crate) fn accept(&self) -> Result<rustls::ServerConnection, String> {
        let config = Arc::clone(&self.configs.current.read().0);
        rustls::ServerConnection::new(config).map_err(|error| format!("cannot start TLS: {error}"))
    }

    /// A client session to the peer at `ip` (its certificate must name that address).
    pub(crate) fn dial(&self, ip: IpAddr) -> Result<rustls::ClientConnection, String> {
        let config = Arc::clone(&self.configs.current.read().1);
        rustls::ClientConnection::new(config, ServerName::IpAddress(ip.into()))
            .map_err(|error| format!("cannot start TLS: {error}"))
    }

    /// Checks an accepted peer's certificate (already verified against the CA): it must carry
    /// an allowed name, if any are configured, and `claimed_ip` — the peer address the
    /// cluster configuration gives the node id the peer claims to be.
    pub(crate) fn check_peer(
        &self,
        certificates: Option<&[CertificateDer<'_>]>,
        claimed_ip: Option<IpAddr>,
    ) -> Result<(), String> {
        let certificate = certificates
            .and_then(|certificates| certificates.first())
            .ok_or("the peer presented no certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
            .map_err(|error| format!("the peer's certificate does not parse: {error}"))?;
        let mut names: Vec<String> = parsed
            .subject()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok().map(str::to_string))
            .collect();
        let mut addresses = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        names.push(dns.to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        let address = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        addresses.extend(address);
                    }
                    _ => {}
                }
            }
        }
        let allowed = &self.files.allowed_names;
        if !allowed.is_empty() && !names.iter().any(|name| allowed.contains(name)) {
            return Err(format!(
                "the peer's certificate names {names:?}, none of the allowed {allowed:?}"
            ));
        }
        if let Some(ip) = claimed_ip {
            if !addresses.contains(&ip) {
                return Err(format!(
                    "the peer claims a node whose peer address is {ip}, but its certificate \
                     names only {addresses:?}"
                ));
            }
        }
        Ok(())
    }

    /// Re-reads the files if any changed since they were last read. Returns whether a new
    /// configuration was taken.
    pub fn reload_if_changed(&self) -> bool {
        let files = &self.files;
        self.configs
            .reload_if_changed(files.stamps(), &files.cert, || files.load())
    }

    /// Re-reads the files now. On failure the current configuration stays, and the reason is
    /// logged.
    pub fn reload(&self) -> bool {
        let files = &self.files;
        self.configs.reload(&files.cert, || files.load())
    }
}
