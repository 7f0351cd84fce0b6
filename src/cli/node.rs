//! The `keyval` node binary: flags, assembly of storage + transport + node + client server,
//! and a graceful stop on SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use parking_lot::Mutex;

use crate::config::Config;
use crate::kv::KvStore;
use crate::log::{self, Level};
use crate::metrics::http::{self, MetricsServer};
use crate::metrics::{self, Metrics, Sample};
use crate::node::ForceError;
use crate::node::{Node, NodeOptions};
use crate::raft::Message;
use crate::server::{Server, ServerOptions};
use crate::storage::file::{
    FileOptions, FileStorage, FsyncPolicy, Preallocation, FORCED_FILE_NAME,
};
use crate::storage::Storage;
use crate::transport::tcp::{TcpConfig, TcpTransport};
use crate::transport::{inbound_channel, Transport};
use crate::types::{Membership, NodeId};

use super::join;
use super::logging::{self, LogFormat};
use super::restore::RestoreArgs;
use super::{resolve, ClusterSpec, CLIENT_LISTEN_DEFAULT, PEER_LISTEN_DEFAULT};

/// When the log is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncArg {
    /// Before every acknowledgement (safe; the default).
    Always,
    /// Never. UNSAFE: a power loss or kernel crash loses acknowledged writes and votes, which
    /// can break consistency across the cluster. For benchmarks only.
    Never,
}

/// `keyval`: one node of a keyval cluster. With no flags at all it runs a single-node store
/// on localhost (clients 127.0.0.1:7379, peers 127.0.0.1:7380) with data in ./keyval-data.
#[derive(Debug, Parser)]
#[command(name = "keyval", version, args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// Instead of running a node: an operator command.
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// Read settings from this TOML file: every flag's long name is a key (`data-dir =
    /// "/var/lib/keyval"`). Flags win over `KEYVAL_*` environment variables, which win over
    /// the file, which wins over the defaults. An unknown key is refused with its line.
    #[arg(long, env = "KEYVAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration — every setting, its value and where it came from
    /// (flag, environment, file or default) — as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This node's id (1 or more; default 1); must be a member of --cluster. Recorded in the
    /// data directory at first start: a later start with another id is refused.
    #[arg(long, env = "KEYVAL_ID")]
    pub id: Option<u64>,
    /// The initial cluster: ID=PEER_ADDRESS/CLIENT_ADDRESS for every member, comma-separated,
    /// e.g. 1=127.0.0.1:7380/127.0.0.1:7379,2=127.0.0.1:7382/127.0.0.1:7381. Default: this
    /// node alone. Recorded in the data directory at first start; later starts may leave it
    /// out (the recorded one is used) and refuse a different one.
    #[arg(long, env = "KEYVAL_CLUSTER", conflicts_with = "join")]
    pub cluster: Option<String>,
    /// Join a running cluster instead of forming one: the client address(es) of any of its
    /// members, comma-separated. Needs an explicit --id (never one of a removed node that may
    /// still run), --peer-listen and --client-listen (the addresses the cluster is told). An
    /// empty data directory asks to be added as a learner and then promoted to voter once
    /// caught up; a data directory with state starts from it.
    #[arg(long, env = "KEYVAL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// With --join on a cluster with auth enabled: the user (holding the root role) that asks
    /// for the membership change, `NAME`, with its password in KEYVAL_JOIN_PASSWORD (a node's
    /// command line is visible to every local user). Not needed when the node's client
    /// certificate names a root user.
    #[arg(long, env = "KEYVAL_JOIN_USER", requires = "join")]
    pub join_user: Option<String>,
    /// Quorum-loss recovery: make this node, on its existing data directory, the only voter
    /// of a new cluster that keeps its whole log and snapshot (docs/operations.md,
    /// "Recovering from quorum loss"); grow it back with `--join`. Only when the other
    /// members are gone for good: their ids are retired and they must never run again on
    /// their old data. Remove the flag once the node is up.
    #[arg(long, env = "KEYVAL_FORCE_NEW_CLUSTER", conflicts_with = "join")]
    pub force_new_cluster: bool,
    /// With --join: stay a learner (receive the log, never vote).
    #[arg(long, env = "KEYVAL_JOIN_AS_LEARNER", requires = "join")]
    pub join_as_learner: bool,
    /// Where to listen for peers. Default: this node's peer address in --cluster, else
    /// 127.0.0.1:7380.
    #[arg(long, env = "KEYVAL_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Where to listen for clients. Default: this node's client address in --cluster, else
    /// 127.0.0.1:7379.
    #[arg(long, env = "KEYVAL_CLIENT_LISTEN")]
    pub client_listen: Option<String>,
    /// Cluster id; nodes of different clusters refuse each other's connections. Recorded in
    /// the data directory at first start (default 1); a later start with another one is
    /// refused.
    #[arg(long, env = "KEYVAL_CLUSTER_ID")]
    pub cluster_id: Option<u64>,
    /// Data directory (log segments, hard state, snapshots); locked while the node runs.
    #[arg(long, env = "KEYVAL_DATA_DIR", default_value = "./keyval-data")]
    pub data_dir: PathBuf,
    /// When to fsync: always (safe) or never (UNSAFE: loses acknowledged writes on power
    /// loss; benchmarks only).
    #[arg(long, env = "KEYVAL_FSYNC", value_enum, default_value = "always")]
    pub fsync: FsyncArg,
    /// Length of one tick in milliseconds.
    #[arg(long, env = "KEYVAL_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Minimum election timeout in ticks (randomized up to twice this).
    #[arg(long, env = "KEYVAL_ELECTION_TICKS", default_value_t = 15)]
    pub election_ticks: u64,
    /// Heartbeat interval in ticks; election ticks must exceed twice this.
    #[arg(long, env = "KEYVAL_HEARTBEAT_TICKS", default_value_t = 5)]
    pub heartbeat_ticks: u64,
    /// Serve lease reads (leader reads without a quorum round trip, relying on bounded clock
    /// drift).
    #[arg(long, env = "KEYVAL_LEASE_READS")]
    pub lease_reads: bool,
    /// TEST ONLY, hidden from `--help`: `--check-quorum false` turns check-quorum off, so a
    /// leader cut off from its peers keeps believing it leads until it hears a newer term.
    /// The process partition suite uses it to show that ReadIndex reads stay linearizable
    /// without check-quorum's help. Production runs keep the default (true): it bounds how long
    /// a deposed leader stalls its clients, and `--lease-reads` requires it.
    #[arg(
        long,
        env = "KEYVAL_CHECK_QUORUM",
        default_value_t = true,
        action = ArgAction::Set,
        hide = true
    )]
    pub check_quorum: bool,
    /// Open client connections at most.
    #[arg(long, env = "KEYVAL_MAX_CONNECTIONS", default_value_t = crate::server::CONNECTIONS_MAX_DEFAULT)]
    pub max_connections: usize,
    /// Event-loop threads serving client connections.
    #[arg(long, env = "KEYVAL_CLIENT_IO_THREADS", default_value_t = crate::server::IO_THREADS_DEFAULT)]
    pub client_io_threads: usize,
    /// Requests in flight per client connection at most.
    #[arg(long, env = "KEYVAL_MAX_INFLIGHT", default_value_t = crate::server::INFLIGHT_PER_CONNECTION_MAX_DEFAULT)]
    pub max_inflight: usize,
    /// Deadline of client requests that do not carry one, in milliseconds.
    #[arg(long, env = "KEYVAL_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Close a client connection that sent nothing and had nothing in flight for this many
    /// milliseconds.
    #[arg(
        long,
        env = "KEYVAL_CLIENT_IDLE_TIMEOUT_MS",
        default_value_t = crate::server::IDLE_TIMEOUT_DEFAULT.as_millis() as u64
    )]
    pub client_idle_timeout_ms: u64,
    /// How long an auth token this node issues stays valid, in seconds (etcd's
    /// `--auth-token-ttl`); a client re-authenticates transparently after.
    #[arg(
        long,
        env = "KEYVAL_AUTH_TOKEN_TTL",
        default_value_t = crate::server::auth::AUTH_TOKEN_TTL_DEFAULT.as_secs()
    )]
    pub auth_token_ttl: u64,
    /// Close a client connection whose request frame is not whole this many milliseconds
    /// after its first byte arrived.
    #[arg(
        long,
        env = "KEYVAL_CLIENT_FRAME_TIMEOUT_MS",
        default_value_t = crate::server::FRAME_TIMEOUT_DEFAULT.as_millis() as u64
    )]
    pub client_frame_timeout_ms: u64,
    /// Bytes all client connections together may hold for request frames larger than a
    /// connection's 64 KiB read buffer while they arrive; a frame that does not fit waits.
    #[arg(
        long,
        env = "KEYVAL_CLIENT_BUFFER_BYTES_MAX",
        default_value_t = crate::server::REQUEST_BUFFER_BYTES_MAX_DEFAULT
    )]
    pub client_buffer_bytes_max: u64,
    /// Serve clients over TLS with this certificate (PEM; with --key-file). Re-read when the
    /// file changes, so a certificate can be rotated without a restart.
    #[arg(long, env = "KEYVAL_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, env = "KEYVAL_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; clients may then
    /// present one (required with --client-cert-auth).
    #[arg(long, env = "KEYVAL_TRUSTED_CA_FILE", requires = "cert_file")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require every client to present a certificate from --trusted-ca-file.
    #[arg(long, env = "KEYVAL_CLIENT_CERT_AUTH", requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
    /// Listen on non-loopback addresses without TLS (refused otherwise): only on a network
    /// where everyone who can reach the ports is trusted.
    #[arg(long, env = "KEYVAL_INSECURE")]
    pub insecure: bool,
    /// Mutual TLS between the nodes: this node's peer certificate (PEM; it must name this
    /// node's peer IP address). Needs --peer-key-file and --peer-trusted-ca-file.
    #[arg(
        long,
        env = "KEYVAL_PEER_CERT_FILE",
        requires_all = ["peer_key_file", "peer_trusted_ca_file"]
    )]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, env = "KEYVAL_PEER_KEY_FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA (PEM) every peer's certificate must chain to.
    #[arg(long, env = "KEYVAL_PEER_TRUSTED_CA_FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Names (common name or DNS SAN) a peer's certificate must carry one of, comma-separated
    /// (default: any certificate from --peer-trusted-ca-file).
    #[arg(
        long,
        env = "KEYVAL_PEER_CERT_ALLOWED_CN",
        value_delimiter = ',',
        requires = "peer_cert_file"
    )]
    pub peer_cert_allowed_cn: Vec<String>,
    /// Take a snapshot automatically once this many entries were applied since the last one
    /// (0: only when asked, with `kvctl snapshot`).
    #[arg(long, env = "KEYVAL_SNAPSHOT_ENTRIES", default_value_t = 100_000)]
    pub snapshot_entries: u64,
    /// Take a snapshot automatically once this many bytes of commands were applied since the
    /// last one (0: no byte threshold); whichever of the two thresholds is reached first.
    #[arg(long, env = "KEYVAL_SNAPSHOT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub snapshot_bytes: u64,
    /// Revisions of changes kept for watchers (a watch may start, or resume, at any of
    /// them); 0 keeps none. Every node should use the same value.
    #[arg(long, env = "KEYVAL_WATCH_HISTORY_REVISIONS", default_value_t = crate::kv::HISTORY_REVISIONS_DEFAULT)]
    pub watch_history_revisions: usize,
    /// Bytes of changes (keys, values, previous values) kept for watchers at most; the
    /// newest revision is always kept.
    #[arg(long, env = "KEYVAL_WATCH_HISTORY_BYTES", default_value_t = crate::kv::HISTORY_BYTES_DEFAULT)]
    pub watch_history_bytes: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    #[arg(long, env = "KEYVAL_SNAPSHOT_MARGIN_ENTRIES", default_value_t = 1_000)]
    pub snapshot_margin_entries: u64,
    /// Log level: error, warn, info, debug or trace. Info: start and stop, elections, leader
    /// and configuration changes, snapshots; debug adds connections, flow control, compaction.
    #[arg(long, env = "KEYVAL_LOG_LEVEL", default_value = "info")]
    pub log_level: Level,
    /// Log line format on stderr: text (`ts LEVEL node=n1 msg="..." key=value`) or json (one
    /// object per line).
    #[arg(long, env = "KEYVAL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where to serve /metrics (Prometheus), /livez and /readyz over HTTP; `off` (or empty)
    /// disables it. Default: loopback, at the client port + 1000 (127.0.0.1:8379 for the
    /// default client port); if that port is taken, the node runs without it and warns.
    #[arg(long, env = "KEYVAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Operator commands of the `keyval` binary (the node itself runs when none is given).
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Seed an empty data directory from a `kvctl snapshot save` backup, for one node of a
    /// NEW cluster: restore every node from the same file, then start them with the same
    /// --cluster.
    Restore(RestoreArgs),
}

/// The client port plus this is the default metrics port.
pub const METRICS_PORT_OFFSET: u16 = 1000;

/// Where the metrics endpoint listens, as the flags say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetricsListen {
    /// Not at all (`--metrics-listen off`).
    Off,
    /// The default: loopback, client port + 1000; a taken port is a warning.
    Default(SocketAddr),
    /// Where `--metrics-listen` says; a failure to bind stops the start.
    Given(SocketAddr),
}

/// Everything derived from the flags, checked.
#[derive(Debug)]
struct Plan {
    id: NodeId,
    cluster: ClusterSpec,
    peer_listen: SocketAddr,
    client_listen: SocketAddr,
    config: Config,
    metrics_listen: MetricsListen,
}

impl Plan {
    /// A restart without `--cluster`: listen where the recorded configuration says this node
    /// is reached, unless `--peer-listen` / `--client-listen` say otherwise.
    fn use_recorded(&mut self, args: &NodeArgs, recorded: &Membership) -> anyhow::Result<()> {
        if args.cluster.is_some() || !args.join.is_empty() {
            return Ok(());
        }
        let Some(address) = recorded.addresses.get(&self.id) else {
            return Ok(());
        };
        if args.peer_listen.is_none() && !address.peer.is_empty() {
            self.peer_listen = resolve(&address.peer)
                .map_err(|error| anyhow::anyhow!("recorded peer address: {error}"))?;
        }
        if args.client_listen.is_none() && !address.client.is_empty() {
            self.client_listen = resolve(&address.client)
                .map_err(|error| anyhow::anyhow!("recorded client address: {error}"))?;
            if let MetricsListen::Default(_) = self.metrics_listen {
                self.metrics_listen = default_metrics_listen(self.client_listen);
            }
        }
        Ok(())
    }
}

fn plan(args: &NodeArgs) -> anyhow::Result<Plan> {
    let id = NodeId(args.id.unwrap_or(1));
    if id.0 == 0 {
        bail!("--id 0 is invalid: node ids start at 1");
    }
    if !args.join.is_empty() {
        let missing: Vec<&str> = [
            ("--id", args.id.is_none()),
            ("--peer-listen", args.peer_listen.is_none()),
            ("--client-listen", args.client_listen.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, missing)| missing.then_some(flag))
        .collect();
        if !missing.is_empty() {
            bail!(
                "--join needs {}: a joining node must say which id it is (never reuse the id of \
                 a removed node that may still run) and where the cluster reaches it",
                missing.join(", ")
            );
        }
    }
    let cluster = match &args.cluster {
        Some(spec) => {
            ClusterSpec::parse(spec).map_err(|error| anyhow::anyhow!("--cluster: {error}"))?
        }
        None => {
            let peer = args.peer_listen.as_deref().unwrap_or(PEER_LISTEN_DEFAULT);
            let client = args
                .client_listen
                .as_deref()
                .unwrap_or(CLIENT_LISTEN_DEFAULT);
            let peer = resolve(peer).map_err(|error| anyhow::anyhow!("--peer-listen: {error}"))?;
            ClusterSpec::single(id, peer, client.to_string())
        }
    };
    if args.force_new_cluster && cluster.members.len() > 1 {
        bail!(
            "--force-new-cluster makes this node the only member: a --cluster naming {} members \
             contradicts it; leave --cluster out (the new cluster is this node at its \
             --peer-listen / --client-listen, or its recorded addresses)",
            cluster.members.len()
        );
    }
    let Some(me) = cluster.members.get(&id) else {
        let ids: Vec<u64> = cluster.members.keys().map(|id| id.0).collect();
        bail!(
            "--id {} is not a member of --cluster (members: {ids:?})",
            id.0
        );
    };
    let peer_listen = match &args.peer_listen {
        Some(address) => {
            resolve(address).map_err(|error| anyhow::anyhow!("--peer-listen: {error}"))?
        }
        None => me.peer_address,
    };
    let client_listen = match &args.client_listen {
        Some(address) => address.as_str(),
        None => me.client_address.as_str(),
    };
    let client_listen =
        resolve(client_listen).map_err(|error| anyhow::anyhow!("--client-listen: {error}"))?;
    if args.tick_ms == 0 {
        bail!("--tick-ms must be at least 1");
    }
    if args.lease_reads && !args.check_quorum {
        bail!(
            "--lease-reads requires check-quorum: a leased leader must step down when it loses \
             its quorum; drop --check-quorum false (a test-only flag)"
        );
    }
    let mut config = Config::new(id);
    config.tick = Duration::from_millis(args.tick_ms);
    config.election_ticks = args.election_ticks;
    config.heartbeat_ticks = args.heartbeat_ticks;
    config.check_quorum = args.check_quorum;
    config.lease_reads = args.lease_reads;
    config.snapshot_entries = args.snapshot_entries;
    config.snapshot_bytes = args.snapshot_bytes;
    config.snapshot_margin_entries = args.snapshot_margin_entries;
    config.validate().context("timing flags")?;
    if args.request_timeout_ms == 0
        || Duration::from_millis(args.request_timeout_ms) > crate::server::REQUEST_TIMEOUT_MAX
    {
        bail!(
            "--request-timeout-ms must be in 1..={}",
            crate::server::REQUEST_TIMEOUT_MAX.as_millis()
        );
    }
    if args.auth_token_ttl == 0 {
        bail!("--auth-token-ttl must be at least 1 (second)");
    }
    if args.client_idle_timeout_ms == 0 || args.client_frame_timeout_ms == 0 {
        bail!("--client-idle-timeout-ms and --client-frame-timeout-ms must be at least 1");
    }
    if args.client_buffer_bytes_max < crate::server::REQUEST_BUFFER_BYTES_MIN {
        bail!(
            "--client-buffer-bytes-max must be at least {} (one maximal frame)",
            crate::server::REQUEST_BUFFER_BYTES_MIN
        );
    }
    let metrics_listen = match args.metrics_listen.as_deref().map(str::trim) {
        None => default_metrics_listen(client_listen),
        Some("" | "off") => MetricsListen::Off,
        Some(address) => MetricsListen::Given(
            resolve(address).map_err(|error| anyhow::anyhow!("--metrics-listen: {error}"))?,
        ),
    };
    Ok(Plan {
        id,
        cluster,
        peer_listen,
        client_listen,
        config,
        metrics_listen,
    })
}

/// Secure by default: a port reachable beyond this machine must speak TLS, unless the
/// operator says `--insecure`.
fn check_exposure(
    args: &NodeArgs,
    peer_listen: SocketAddr,
    client_listen: SocketAddr,
) -> anyhow::Result<()> {
    if args.insecure {
        return Ok(());
    }
    let exposed = |address: SocketAddr| !address.ip().is_loopback();
    if exposed(client_listen) && args.cert_file.is_none() {
        bail!(
            "refusing to serve clients on {client_listen} without TLS: anyone who can reach it \
             could read and write everything. Give --cert-file and --key-file (docs/security.md), \
             listen on a loopback address, or pass --insecure on a network you trust"
        );
    }
    if exposed(peer_listen) && args.peer_cert_file.is_none() {
        bail!(
            "refusing to listen for peers on {peer_listen} without TLS: anyone who can reach it \
             could speak Raft to the cluster. Give --peer-cert-file, --peer-key-file and \
             --peer-trusted-ca-file (docs/security.md), listen on a loopback address, or pass \
             --insecure on a network you trust"
        );
    }
    Ok(())
}

/// How this node reaches the cluster it joins: over TLS when it serves clients over TLS,
/// trusting its `--trusted-ca-file` and presenting its own client-port certificate.
fn join_target(args: &NodeArgs) -> anyhow::Result<join::Target> {
    let tls = match (&args.cert_file, &args.key_file, &args.trusted_ca_file) {
        (Some(cert), Some(key), Some(ca)) => Some(
            crate::tls::ClientTls::new(ca, Some((cert, key)))
                .context("--join over TLS (--trusted-ca-file, --cert-file, --key-file)")?,
        ),
        (Some(_), _, None) => anyhow::bail!(
            "--join with --cert-file needs --trusted-ca-file: the CA of the other nodes' client \
             certificates"
        ),
        _ => None,
    };
    let credentials = match &args.join_user {
        None => None,
        Some(user) => {
            let password = std::env::var("KEYVAL_JOIN_PASSWORD").map_err(|_| {
                anyhow::anyhow!("--join-user {user:?} needs its password in KEYVAL_JOIN_PASSWORD")
            })?;
            Some(crate::client::Credentials::new(user.clone(), password))
        }
    };
    Ok(join::Target {
        endpoints: args.join.clone(),
        tls,
        credentials,
    })
}

/// The peer port's mutual TLS, as the flags ask.
fn peer_tls(args: &NodeArgs) -> anyhow::Result<Option<Arc<crate::tls::PeerTls>>> {
    let (Some(cert), Some(key), Some(ca)) = (
        &args.peer_cert_file,
        &args.peer_key_file,
        &args.peer_trusted_ca_file,
    ) else {
        return Ok(None);
    };
    let tls = crate::tls::PeerTls::new(crate::tls::PeerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        trusted_ca: ca.clone(),
        allowed_names: args.peer_cert_allowed_cn.clone(),
    })?;
    Ok(Some(Arc::new(tls)))
}

/// The client port's TLS, as the flags ask.
fn server_tls(args: &NodeArgs) -> anyhow::Result<Option<Arc<crate::tls::ServerTls>>> {
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        return Ok(None);
    };
    let client_auth = match (&args.trusted_ca_file, args.client_cert_auth) {
        (None, _) => crate::tls::ClientAuth::None,
        (Some(_), false) => crate::tls::ClientAuth::Optional,
        (Some(_), true) => crate::tls::ClientAuth::Required,
    };
    let tls = crate::tls::ServerTls::new(crate::tls::ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        trusted_ca: args.trusted_ca_file.clone(),
        client_auth,
    })?;
    Ok(Some(Arc::new(tls)))
}

/// Raises the soft limit on open files to the hard limit (every client connection is one),
/// and warns when even that is below the connection limit.
fn raise_open_files_limit(connections_max: usize) {
    // Peers, log segments, snapshots and listeners besides the client connections.
    const OTHER_FILES: u64 = 256;
    let wanted = connections_max as u64 + OTHER_FILES;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => log::warn(
            "the open-file limit is below what --max-connections needs: connections beyond it \
             are refused by the OS",
            &[("limit", &limit), ("needed", &wanted)],
        ),
        Ok(_) => {}
        Err(error) => log::warn(
            "cannot read or raise the open-file limit",
            &[("error", &error)],
        ),
    }
}

/// Loopback at the client port + [`METRICS_PORT_OFFSET`] (off when that is past 65535).
fn default_metrics_listen(client_listen: SocketAddr) -> MetricsListen {
    match client_listen.port().checked_add(METRICS_PORT_OFFSET) {
        Some(port) => MetricsListen::Default(SocketAddr::from(([127, 0, 0, 1], port))),
        None => MetricsListen::Off,
    }
}

/// The node's metrics: what the node records, and a sample taken at each scrape of the
/// transport, the data directory and the client server (once `server` holds it).
fn node_metrics(
    data_dir: &std::path::Path,
    node: &Arc<Node<KvStore>>,
    transport: &Arc<TcpTransport<Message>>,
    server: &Arc<std::sync::OnceLock<Arc<Mutex<Server>>>>,
) -> Arc<Metrics> {
    let sample = {
        let (node, transport, server) =
            (Arc::clone(node), Arc::clone(transport), Arc::clone(server));
        let data_dir = data_dir.to_path_buf();
        move || {
            let mut sample =
                Sample::of_node(&node, |store: &KvStore| (store.len() as u64, store.bytes()))
                    .with_data_dir(&data_dir);
            sample.transport = Some(transport.stats());
            sample.peers = Some(transport.peer_stats());
            if let Some(server) = server.get() {
                let stats = server.lock().stats();
                sample.client_connections_open = Some(stats.connections_open as u64);
                sample.client_connections_accepted = Some(stats.connections_accepted);
                sample.client_connections_refused = Some(stats.connections_refused);
            }
            sample
        }
    };
    Arc::new(Metrics::new(node.metrics(), sample))
}

/// Starts the metrics and health endpoint for `node` as `plan` says; `None` when it is off
/// or its default port is taken (logged).
fn start_metrics(
    plan: &Plan,
    node: &Arc<Node<KvStore>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Option<MetricsServer>> {
    let address = match plan.metrics_listen {
        MetricsListen::Off => return Ok(None),
        MetricsListen::Default(address) | MetricsListen::Given(address) => address,
    };
    let ready = {
        let node = Arc::clone(node);
        Box::new(move || metrics::readiness(&node, http::READY_APPLY_WAIT))
    };
    let endpoints = http::Endpoints { metrics, ready };
    match MetricsServer::start(address, format!("{}-metrics", plan.id), endpoints) {
        Ok(server) => Ok(Some(server)),
        Err(error) if matches!(plan.metrics_listen, MetricsListen::Default(_)) => {
            tracing::warn!(
                error = %error,
                "running without the metrics endpoint: its default port is taken; give \
                 --metrics-listen ADDRESS (or off)"
            );
            Ok(None)
        }
        Err(error) => Err(error).context("--metrics-listen"),
    }
}

/// Runs the operator command given, or else a node until SIGINT or SIGTERM, then stops gracefully: stop accepting clients,
/// answer what is in flight, stop the node (its log writer syncs what it holds), close.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    if let Some(NodeCommand::Restore(restore)) = &args.command {
        logging::install(args.log_level, args.log_format, None);
        return super::restore::run(restore);
    }
    let mut plan = plan(&args)?;
    logging::install(args.log_level, args.log_format, Some(plan.id.to_string()));
    if !plan.config.check_quorum {
        log::warn(
            "check-quorum is off (test only): a leader cut off from its peers keeps leading",
            &[],
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let fsync = match args.fsync {
        FsyncArg::Always => FsyncPolicy::Always,
        FsyncArg::Never => {
            log::warn(
                "fsync is off: a power loss can lose acknowledged writes",
                &[],
            );
            FsyncPolicy::Never
        }
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let mut storage = FileStorage::open(
        &args.data_dir,
        FileOptions {
            fsync,
            // The log writer does not wait for unlinking compacted segments (docs/storage.md).
            remove_in_background: true,
            // Log fsyncs write data only, not the segment's new size through the journal.
            preallocate: Preallocation::Background,
            ..FileOptions::default()
        },
    )
    .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    if args.force_new_cluster && storage.is_empty() {
        bail!(
            "--force-new-cluster: nothing to recover in data directory {}: it holds no log and \
             no snapshot. Give it the data directory of a surviving member",
            args.data_dir.display()
        );
    }
    join::check_node_id(&mut storage, plan.id)?;
    let cluster_id = check_cluster_id(&mut storage, args.cluster_id)?;
    if args.force_new_cluster {
        force_new_cluster(&args, &plan, &mut storage)?;
    }
    let recorded = storage
        .load_bootstrap()
        .with_context(|| format!("reading data directory {}", args.data_dir.display()))?;
    if let Some(recorded) = &recorded {
        plan.use_recorded(&args, recorded)?;
    }
    let membership = if recorded.is_some() && args.cluster.is_none() {
        // Started before: the recorded configuration (and the log's) rule.
        if !args.join.is_empty() {
            log::info(
                "the data directory has state: starting from it, not joining again",
                &[("data_dir", &args.data_dir.display())],
            );
        }
        Membership::default()
    } else {
        initial_membership(&args, &plan, &storage, &stop)?
    };
    // Peers come from the configuration: `Node::start` hands the one it recovers (or this
    // initial one) to `Transport::update_members`, which resolves every member's address.
    check_exposure(&args, plan.peer_listen, plan.client_listen)?;
    let (inbound_tx, inbound_rx) = inbound_channel();
    let transport = Arc::new(
        TcpTransport::<Message>::start(
            TcpConfig {
                tls: peer_tls(&args)?,
                ..TcpConfig::new(plan.id, cluster_id, plan.peer_listen, BTreeMap::new())
            },
            inbound_tx,
        )
        .with_context(|| format!("starting the peer transport on {}", plan.peer_listen))?,
    );
    let seed = rand::random::<u64>();
    let node = Arc::new(
        Node::start(NodeOptions {
            config: plan.config.clone(),
            membership: membership.clone(),
            storage: Box::new(storage),
            transport: Arc::clone(&transport) as Arc<dyn Transport>,
            inbound: inbound_rx,
            state_machine: KvStore::with_history_limits(crate::kv::HistoryLimits {
                revisions: args.watch_history_revisions,
                bytes: args.watch_history_bytes,
            }),
            seed,
        })
        .context("starting the node")?,
    );
    // The peer readers step what they read into the core themselves (a hop fewer per write).
    transport.deliver_directly(node.peer_delivery());
    let mut server_options = ServerOptions::new(plan.client_listen);
    server_options.client_addresses = node
        .members()
        .addresses
        .iter()
        .filter(|(_, address)| !address.client.is_empty())
        .map(|(id, address)| (*id, address.client.clone()))
        .collect();
    server_options.connections_max = args.max_connections;
    server_options.inflight_per_connection_max = args.max_inflight;
    server_options.io_threads = args.client_io_threads;
    server_options.tls = server_tls(&args)?;
    raise_open_files_limit(args.max_connections);
    server_options.request_timeout_default = Duration::from_millis(args.request_timeout_ms);
    server_options.idle_timeout = Duration::from_millis(args.client_idle_timeout_ms);
    server_options.auth_token_ttl = Duration::from_secs(args.auth_token_ttl);
    server_options.frame_timeout = Duration::from_millis(args.client_frame_timeout_ms);
    server_options.request_buffer_bytes_max = args.client_buffer_bytes_max;
    let server_slot = Arc::new(std::sync::OnceLock::new());
    let metrics = node_metrics(&args.data_dir, &node, &transport, &server_slot);
    server_options.metrics = Some(Arc::clone(&metrics));
    let server = Arc::new(Mutex::new(Server::start(
        Arc::clone(&node),
        server_options,
    )?));
    let _ = server_slot.set(Arc::clone(&server));
    let mut metrics_server = start_metrics(&plan, &node, metrics)?;
    log::info(
        "node started",
        &[
            ("peer_listen", &transport.local_addr()),
            ("client_listen", &server.lock().local_addr()),
            (
                "metrics_listen",
                &metrics_server.as_ref().map_or_else(
                    || "off".to_string(),
                    |server| server.local_addr().to_string(),
                ),
            ),
            ("cluster", &node.members()),
            ("data_dir", &args.data_dir.display()),
        ],
    );
    let promotion = if !args.join.is_empty() && !args.join_as_learner {
        Some(join::spawn_promotion(
            &join_target(&args)?,
            plan.id,
            Arc::clone(&stop),
        )?)
    } else {
        None
    };
    let failure = watch_until_stopped(&node, &stop);
    if let Some(reason) = &failure {
        log::error(
            "storage failed: the node stopped serving and exits; check the disk, then restart \
             it (recovery keeps everything that was synced)",
            &[("error", reason)],
        );
    } else {
        log::info(
            "stopping: no new clients, finishing requests in flight",
            &[],
        );
    }
    if let Some(promotion) = promotion {
        let _ = promotion.join();
    }
    if let Some(metrics_server) = &mut metrics_server {
        metrics_server.shutdown();
    }
    server.lock().shutdown();
    // A leader hands over before it goes (a failed node no longer leads: nothing to do), so the cluster does not wait an election timeout
    // for a new one (thesis §3.10).
    let handover = Duration::from_millis(args.tick_ms.saturating_mul(args.election_ticks) * 2);
    match node.hand_over_leadership(Instant::now() + handover) {
        Ok(Some(successor)) => log::info("handed leadership over", &[("to", &successor)]),
        Ok(None) => {}
        Err(error) => log::warn("leadership handover failed", &[("error", &error)]),
    }
    node.shutdown();
    drop(transport);
    if let Some(reason) = failure {
        anyhow::bail!("storage failed: {reason}");
    }
    log::info("stopped", &[]);
    Ok(())
}

/// `--force-new-cluster`: rewrites the data directory into a one-member cluster
/// ([`crate::node::force_new_cluster`]) before the node starts from it.
fn force_new_cluster(
    args: &NodeArgs,
    plan: &Plan,
    storage: &mut FileStorage,
) -> anyhow::Result<()> {
    let options = crate::node::ForceOptions {
        id: plan.id,
        peer_address: args
            .peer_listen
            .is_some()
            .then(|| plan.peer_listen.to_string()),
        client_address: args
            .client_listen
            .is_some()
            .then(|| plan.client_listen.to_string()),
        forced_before: storage
            .forced_at()
            .context("reading the data directory")?
            .is_some(),
    };
    let dir = args.data_dir.display();
    let in_force = crate::node::configuration_in_force(storage)
        .with_context(|| format!("reading data directory {dir}"))?;
    let others_in_force = in_force.members().iter().any(|member| *member != plan.id);
    // A directory forced before whose cluster grew is refused below, whoever answers.
    if others_in_force && !options.forced_before {
        check_others_down(args, plan.id, &in_force)?;
    }
    let forced = match crate::node::force_new_cluster(storage, &options) {
        Ok(forced) => forced,
        Err(error @ ForceError::ForcedBefore { .. }) => bail!(
            "--force-new-cluster on {dir}: {error}. The flag was probably left on this node's \
             command line: remove it. Only if this cluster has lost its quorum for good too, \
             delete {} and run the command again",
            args.data_dir.join(FORCED_FILE_NAME).display()
        ),
        Err(error) => return Err(error).with_context(|| format!("--force-new-cluster on {dir}")),
    };
    match forced.appended {
        Some(entry) => {
            // After the configuration entry: a crash before this write leaves a directory
            // that a flag left in place could force once more (the window is this write).
            storage
                .record_forced_at(entry.index)
                .with_context(|| format!("recording the forced start in {dir}"))?;
            log::warn(
                "forced a new cluster: this node is its only voter and keeps its whole log; \
                 the other members are retired and must never run again on their old data; \
                 grow the cluster back with --join, and remove --force-new-cluster from this \
                 node's command",
                &[
                    ("previous", &forced.previous),
                    ("membership", &forced.membership),
                    ("kept_through", &forced.kept_through),
                    ("configuration_entry", &entry),
                ],
            );
        }
        None => log::warn(
            "--force-new-cluster: this node already is the only voter; nothing forced again \
             (remove the flag)",
            &[("membership", &forced.membership)],
        ),
    }
    Ok(())
}

/// How long `--force-new-cluster` waits for each other member's answer before taking it as down.
const FORCE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Refuses `--force-new-cluster` while another member of the configuration in force answers
/// at its client address: then the majority is not gone for good (or another survivor still
/// runs), and forcing would leave two clusters accepting writes. Best effort: a member this
/// machine cannot reach looks down.
fn check_others_down(args: &NodeArgs, id: NodeId, membership: &Membership) -> anyhow::Result<()> {
    let tls = join_target(args).ok().and_then(|target| target.tls);
    for (member, address) in &membership.addresses {
        if *member == id || !membership.contains(*member) || address.client.is_empty() {
            continue;
        }
        let options = crate::client::ClientOptions {
            request_timeout: FORCE_PROBE_TIMEOUT,
            attempt_timeout: FORCE_PROBE_TIMEOUT,
            connect_timeout: FORCE_PROBE_TIMEOUT,
            tls: tls.clone(),
            ..crate::client::ClientOptions::default()
        };
        let endpoint = std::slice::from_ref(&address.client);
        let Ok(client) = crate::client::Client::new(endpoint, options) else {
            continue;
        };
        if client.status(&address.client).is_ok() {
            bail!(
                "--force-new-cluster refused: member {} answers at {}, so the cluster has not \
                 lost it for good. Force only when the majority is gone for good, and stop \
                 every other surviving member first (pick the one with the most data)",
                member.0,
                address.client
            );
        }
    }
    Ok(())
}

/// Checks `--cluster-id` against the one the data directory records, recording it (or the
/// default, 1) at first start; returns the cluster id to use.
fn check_cluster_id(storage: &mut FileStorage, given: Option<u64>) -> anyhow::Result<u64> {
    let dir = storage.dir().display().to_string();
    let recorded = storage
        .cluster_id()
        .with_context(|| format!("reading the cluster id of data directory {dir}"))?;
    match (recorded, given) {
        (Some(recorded), Some(given)) if recorded != given => bail!(
            "data directory {dir} belongs to cluster {recorded} (its cluster-id file), not to \
             --cluster-id {given}: a cluster's id never changes; start it with --cluster-id \
             {recorded} or none, or give this node an empty data directory"
        ),
        (Some(recorded), _) => Ok(recorded),
        (None, given) => {
            let id = given.unwrap_or(1);
            if id == 0 {
                bail!("--cluster-id 0 is invalid: cluster ids start at 1");
            }
            storage
                .record_cluster_id(id)
                .with_context(|| format!("recording cluster id {id} in data directory {dir}"))?;
            Ok(id)
        }
    }
}

/// The configuration the node starts from (its stored log and snapshot, if any, override it):
/// the `--cluster` for a node of a new cluster; for `--join` with an empty data directory, the
/// configuration the cluster answers when asked to add this node as a learner; for `--join`
/// with state, this node as a learner (so it never campaigns on its own say-so) with the
/// addresses the cluster reports, if it answers.
fn initial_membership(
    args: &NodeArgs,
    plan: &Plan,
    storage: &FileStorage,
    stop: &AtomicBool,
) -> anyhow::Result<Membership> {
    let own = plan.cluster.membership();
    if args.join.is_empty() {
        return Ok(own);
    }
    let address = own.addresses.get(&plan.id).cloned().unwrap_or_default();
    if storage.is_empty() {
        return join::join_as_learner(&join_target(args)?, plan.id, &address, stop);
    }
    // A data directory from before the bootstrap configuration was recorded.
    log::info(
        "the data directory has state: starting from it, not joining again",
        &[("data_dir", &args.data_dir.display())],
    );
    let mut membership = Membership {
        learners: [plan.id].into(),
        ..Membership::default()
    };
    if let Some(known) = join::known_members(&join_target(args)?) {
        membership.addresses = known.addresses;
    }
    membership.addresses.insert(plan.id, address);
    Ok(membership)
}

/// Waits until `stop` is set or storage fails; returns the failure. (The node logs its own
/// role, leader and configuration changes.)
fn watch_until_stopped(node: &Node<KvStore>, stop: &AtomicBool) -> Option<String> {
    while !stop.load(Ordering::SeqCst) {
        if let Some(reason) = node.failure() {
            return Some(reason);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> NodeArgs {
        let mut all = vec!["keyval"];
        all.extend_from_slice(flags);
        NodeArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn no_flags_is_a_single_local_node() {
        let plan = plan(&args(&[])).unwrap();
        assert_eq!(plan.id, NodeId(1));
        assert_eq!(plan.client_listen.to_string(), CLIENT_LISTEN_DEFAULT);
        assert_eq!(plan.peer_listen.to_string(), PEER_LISTEN_DEFAULT);
        assert_eq!(plan.cluster.members.len(), 1);
    }

    #[test]
    fn listen_addresses_come_from_the_cluster() {
        let plan = plan(&args(&[
            "--id",
            "2",
            "--cluster",
            "1=127.0.0.1:1001/127.0.0.1:2001,2=127.0.0.1:1002/127.0.0.1:2002",
        ]))
        .unwrap();
        assert_eq!(plan.peer_listen.to_string(), "127.0.0.1:1002");
        assert_eq!(plan.client_listen.to_string(), "127.0.0.1:2002");
    }

    #[test]
    fn bad_ids_and_timings_are_refused() {
        let error = plan(&args(&[
            "--id",
            "3",
            "--cluster",
            "1=127.0.0.1:1/127.0.0.1:2",
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("not a member"), "{error}");
        assert!(plan(&args(&["--id", "0"])).is_err());
        let plan_with_snapshots = plan(&args(&["--snapshot-entries", "0"])).unwrap();
        assert_eq!(plan_with_snapshots.config.snapshot_entries, 0);
        let error = plan(&args(&["--election-ticks", "4"])).unwrap_err();
        assert!(format!("{error:#}").contains("election_ticks"), "{error:#}");
    }

    #[test]
    fn check_quorum_is_on_unless_turned_off_and_lease_reads_need_it() {
        assert!(plan(&args(&[])).unwrap().config.check_quorum);
        assert!(
            plan(&args(&["--check-quorum", "true"]))
                .unwrap()
                .config
                .check_quorum
        );
        let off = plan(&args(&["--check-quorum", "false"])).unwrap();
        assert!(!off.config.check_quorum);
        assert!(!off.config.lease_reads);
        assert!(plan(&args(&["--lease-reads"])).unwrap().config.lease_reads);
        let error = plan(&args(&["--check-quorum", "false", "--lease-reads"])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("--lease-reads requires check-quorum"),
            "{error}"
        );
    }

    #[test]
    fn metrics_listen_defaults_to_loopback_at_the_client_port_plus_1000() {
        let default = plan(&args(&["--client-listen", "0.0.0.0:7000"])).unwrap();
        assert_eq!(
            default.metrics_listen,
            MetricsListen::Default("127.0.0.1:8000".parse().unwrap())
        );
        for off in ["off", ""] {
            let plan = plan(&args(&["--metrics-listen", off])).unwrap();
            assert_eq!(plan.metrics_listen, MetricsListen::Off);
        }
        let given = plan(&args(&["--metrics-listen", "127.0.0.1:9100"])).unwrap();
        assert_eq!(
            given.metrics_listen,
            MetricsListen::Given("127.0.0.1:9100".parse().unwrap())
        );
        let high = plan(&args(&["--client-listen", "127.0.0.1:65000"])).unwrap();
        assert_eq!(high.metrics_listen, MetricsListen::Off);
        assert!(plan(&args(&["--metrics-listen", "nowhere"])).is_err());
    }

    #[test]
    fn a_join_needs_an_explicit_id_and_listen_addresses() {
        let error = plan(&args(&[
            "--join",
            "127.0.0.1:7379",
            "--peer-listen",
            "127.0.0.1:1",
        ]))
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--id"), "{message}");
        assert!(message.contains("--client-listen"), "{message}");
        assert!(!message.contains("--peer-listen,"), "{message}");
        let joining = args(&[
            "--join",
            "127.0.0.1:7379,127.0.0.1:7381",
            "--id",
            "4",
            "--peer-listen",
            "127.0.0.1:1",
            "--client-listen",
            "127.0.0.1:2",
        ]);
        assert_eq!(joining.join.len(), 2);
        let plan = plan(&joining).unwrap();
        assert_eq!(plan.id, NodeId(4));
        assert_eq!(plan.client_listen.to_string(), "127.0.0.1:2");
        let conflict = NodeArgs::try_parse_from([
            "keyval",
            "--join",
            "127.0.0.1:7379",
            "--cluster",
            "1=127.0.0.1:1/127.0.0.1:2",
        ]);
        assert!(conflict.is_err(), "--join and --cluster exclude each other");
        assert!(NodeArgs::try_parse_from(["keyval", "--join-as-learner"]).is_err());
    }
}
