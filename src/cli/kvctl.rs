//! `kvctl`: talk to a running cluster from the shell.
//!
//! Exit codes: 0 success, 1 error (unavailable, rejected, timed out…), 2 usage error,
//! 3 key not found (`get`), 4 compare-and-swap condition failed (`cas`; `put --fencing-token`:
//! a later holder's token was seen), 5 the write's outcome
//! is unknown (`Indeterminate`: it may or may not have been applied; for `member` and
//! `transfer-leader`: the change may or may not have taken effect), 6 refused for who you are
//! (authentication failed, unauthenticated, permission denied). `txn` exits 0 whichever
//! branch ran (it prints SUCCESS or FAILURE, as etcdctl does) and 2 when its input does not
//! parse.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{CasOutcome, Client, ClientError, ClientOptions};
use crate::kv::{Expect, KeyRange, Metadata, Versioned, SCAN_LIMIT_MAX};
use crate::protocol::Consistency;
use crate::types::LogIndex;

use super::bench::BenchArgs;
use super::member::MemberCommand;
use super::snapshot::SnapshotArgs;

/// Success.
pub const EXIT_OK: i32 = 0;
/// Any error not listed below.
pub const EXIT_ERROR: i32 = 1;
/// Bad flags or arguments (clap's own code).
pub const EXIT_USAGE: i32 = 2;
/// `get`: the key does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;
/// `cas`: the condition did not hold; nothing was written. Also `put --fencing-token`: the
/// key had seen a higher token; nothing was written.
pub const EXIT_CAS_FAILED: i32 = 4;
/// A write's outcome is unknown: it may or may not have been applied.
pub const EXIT_INDETERMINATE: i32 = 5;
/// Refused for who the user is: authentication failed, not authenticated, or permission
/// denied. Nothing was done.
pub const EXIT_DENIED: i32 = 6;

/// `kvctl`: read, write and inspect a keyval cluster.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found (get), 4 cas condition failed \
                  (or put --fencing-token refused), 5 indeterminate (the write may or may not \
                  have been applied), 6 denied (authentication failed or permission denied)."
)]
pub struct KvctlArgs {
    /// Client addresses of the cluster's nodes, comma-separated (any subset works).
    #[arg(
        long,
        env = "KEYVAL_ENDPOINTS",
        default_value = super::CLIENT_LISTEN_DEFAULT,
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one command may take, retries included, in milliseconds.
    #[arg(long, env = "KEYVAL_TIMEOUT_MS", default_value_t = 5000, global = true)]
    pub timeout_ms: u64,
    /// How long one attempt on one node may take before kvctl gives up on that node and
    /// tries another (same request, so a write still applies once), in milliseconds. Default:
    /// the client's (1000).
    #[arg(long, env = "KEYVAL_ATTEMPT_TIMEOUT_MS", global = true)]
    pub attempt_timeout_ms: Option<u64>,
    /// Speak TLS to the nodes, trusting the CA certificates in this PEM file (the nodes'
    /// certificates must name the endpoints' hosts).
    #[arg(long, env = "KEYVAL_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for nodes that require client certificates; needs
    /// --cacert and --key.
    #[arg(
        long = "cert",
        env = "KEYVAL_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long = "key", env = "KEYVAL_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Run as this user, on a cluster with auth enabled: `NAME:PASSWORD`, or `NAME` with the
    /// password in KEYVAL_PASSWORD (never prompted for). Without it, a client certificate's
    /// common name is the user.
    #[arg(long, env = "KEYVAL_USER", global = true)]
    pub user: Option<String>,
    /// KEY and END arguments are hexadecimal bytes (binary keys), e.g. `00ff10`.
    #[arg(long, global = true)]
    pub hex_keys: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How `get` prints values: text (invalid UTF-8 replaced), hexadecimal, base64, or the raw
/// bytes into a file.
#[derive(Clone, Debug, Default, Args)]
pub struct ValueOutput {
    /// Print values as hexadecimal.
    #[arg(long, conflicts_with_all = ["base64", "output"])]
    pub hex: bool,
    /// Print values as base64.
    #[arg(long, conflicts_with = "output")]
    pub base64: bool,
    /// Write the value's raw bytes to this file (one key only) instead of printing it.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

impl ValueOutput {
    /// `bytes` as this output prints them.
    fn render(&self, bytes: &[u8]) -> String {
        use base64::Engine as _;
        if self.hex {
            hex::encode(bytes)
        } else if self.base64 {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        } else {
            text(bytes)
        }
    }
}

/// A KEY or END argument as bytes: as given, or decoded from hexadecimal with `--hex-keys`.
fn key_bytes(key: &str, hex_keys: bool) -> Result<Vec<u8>, String> {
    if hex_keys {
        hex::decode(key).map_err(|error| format!("{key:?} is not hexadecimal: {error}"))
    } else {
        Ok(key.as_bytes().to_vec())
    }
}

/// The value `put` was given: the argument, stdin (`-`), or a file.
fn put_value(
    value: Option<String>,
    from_file: Option<&std::path::Path>,
) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    match (value.as_deref(), from_file) {
        (_, Some(path)) => std::fs::read(path)
            .map_err(|error| format!("reading the value from {}: {error}", path.display())),
        (Some("-"), None) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|error| format!("reading the value from stdin: {error}"))?;
            Ok(bytes)
        }
        (Some(value), None) => Ok(value.as_bytes().to_vec()),
        (None, None) => Err("put needs VALUE, `-` (stdin) or --from-file".into()),
    }
}

/// `get KEY`: prints the value (or writes it to `--output`); exit 3 if there is none. A stale
/// read says how far behind the node was, in text output too.
fn get_one(
    client: &Client,
    key: &str,
    bytes: Vec<u8>,
    consistency: ConsistencyArg,
    output: &ValueOutput,
    json: bool,
) -> i32 {
    match client.get_with(bytes, consistency.into()) {
        Ok(read) => {
            let found = read.value.is_some();
            if json {
                println!(
                    "{}",
                    json!({
                        "key": key,
                        "found": found,
                        "value": read.value.as_ref().map(|versioned| output.render(&versioned.value)),
                        "metadata": read.value.as_ref().map(|versioned| metadata_json(&versioned.metadata)),
                        "node": read.node.0,
                        "applied": read.applied.0,
                        "behind": read.behind,
                    })
                );
            } else if let (Some(versioned), Some(path)) = (&read.value, &output.output) {
                if let Err(error) = std::fs::write(path, &versioned.value) {
                    eprintln!("kvctl: writing {}: {error}", path.display());
                    return EXIT_ERROR;
                }
            } else if let Some(versioned) = &read.value {
                println!("{}", output.render(&versioned.value));
                if read.behind > 0 {
                    eprintln!(
                        "(stale read from n{}: {} committed entries behind)",
                        read.node.0, read.behind
                    );
                }
            } else {
                eprintln!("(not found)");
            }
            if found {
                EXIT_OK
            } else {
                EXIT_NOT_FOUND
            }
        }
        Err(error) => fail(&error, json),
    }
}

/// `kvctl endpoint ...`.
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every endpoint's id, role, term, leader, commit, applied, last index and snapshot;
    /// removed members are marked. Exit 1 if an endpoint is unreachable or none knows a
    /// leader.
    Status,
    /// Whether each endpoint is healthy (reachable, storage not failed, a leader known) and
    /// the cluster serves a linearizable read; exit 1 if any is not.
    Health,
}

/// A read consistency flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Linearizable (ReadIndex on the leader): the default.
    Linearizable,
    /// Leader lease (no quorum round trip; needs --lease-reads on the nodes).
    Lease,
    /// Whatever the node answering has applied; may be stale.
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(argument: ConsistencyArg) -> Consistency {
        match argument {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Lease => Consistency::Lease,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

/// The kvctl commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to VALUE; with --lease, attached to a lease (deleted when it expires or is
    /// revoked).
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from stdin, byte for byte (no limit from the shell's
        /// argument size).
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from this file, byte for byte.
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
        /// The lease to attach the key to (its id as `lease grant` printed it).
        #[arg(long, value_parser = super::lease::parse_lease_id)]
        lease: Option<crate::kv::LeaseId>,
        /// Write only if this fencing token (from `kvctl lock`, $KEYVAL_FENCING_TOKEN) is at
        /// least the highest KEY has seen, recorded in KEY/fence (exit 4 if refused).
        #[arg(long, conflicts_with = "lease")]
        fencing_token: Option<u64>,
    },
    /// Print KEY's value (exit 3 if it does not exist); with END or --prefix, every key of
    /// the range as `KEY<tab>VALUE` lines (exit 0 even if there is none).
    Get {
        /// The key (with --prefix: the prefix; with END: the first key of the range).
        key: String,
        /// The end of a range: keys from KEY (inclusive) to END (exclusive).
        #[arg(conflicts_with = "prefix")]
        end: Option<String>,
        /// Every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// With END or --prefix: at most this many keys.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=SCAN_LIMIT_MAX as u64))]
        limit: u64,
        /// Read consistency.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
        /// How values are printed.
        #[command(flatten)]
        output: ValueOutput,
    },
    /// Delete KEY; with END or --prefix, every key of the range in one write, printing how
    /// many were removed.
    Del {
        /// The key (with --prefix: the prefix; with END: the first key of the range).
        key: String,
        /// The end of a range: keys from KEY (inclusive) to END (exclusive).
        #[arg(conflicts_with = "prefix")]
        end: Option<String>,
        /// Every key that starts with KEY (an empty KEY: every key).
        #[arg(long)]
        prefix: bool,
    },
    /// Run a transaction read from stdin (or --file) in etcdctl's format: compares, a blank
    /// line, the operations to run if they all hold, a blank line, the operations to run
    /// otherwise. Prints SUCCESS or FAILURE and each operation's answer; exit 0 either way,
    /// 2 if the input does not parse.
    #[command(after_help = "Example (stdin):\n  \
                            version(\"lock\") = \"0\"\n  \
                            \n  \
                            put lock me\n  \
                            \n  \
                            get lock\n\n\
                            Compares: value|version|create|mod(\"KEY\") =|!=|<|> \"OPERAND\".\n\
                            Operations: put KEY VALUE [--prev-kv]; del KEY [END] [--prefix] \
                            [--prev-kv]; get KEY [END] [--prefix] [--limit N].")]
    Txn {
        /// Read the transaction from this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Prompt for each section on stderr (etcdctl txn -i).
        #[arg(short, long)]
        interactive: bool,
    },
    /// Compare-and-swap: write NEW (or delete with --delete) only if the condition holds
    /// (exit 4 if it does not).
    Cas {
        /// The key.
        key: String,
        /// The new value (omit with --delete).
        new: Option<String>,
        /// The condition.
        #[command(flatten)]
        expect: ExpectArgs,
        /// Delete the key instead of writing NEW.
        #[arg(long, conflicts_with = "new")]
        delete: bool,
    },
    /// List keys in order.
    Scan {
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Read consistency.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: ConsistencyArg,
    },
    /// Endpoint checks, like etcdctl's: `endpoint status`, `endpoint health`.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Print every endpoint's status: id, role, term, leader, commit, applied, last index.
    Status,
    /// Measure throughput and latency (like redis-benchmark).
    Bench(BenchArgs),
    /// Checks with a verdict: `check perf` (like etcdctl's).
    #[command(subcommand)]
    Check(super::check::CheckCommand),
    /// Take a snapshot now on the leader (or --node) and print the index it covers; with
    /// `save FILE`, write a consistent backup for `keyval restore`.
    Snapshot(SnapshotArgs),
    /// List, add, promote or remove members (one change at a time).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Grant, revoke, keep alive, inspect and list leases.
    #[command(subcommand)]
    Lease(super::lease::LeaseCommand),
    /// Acquire the distributed lock NAME and print its key and fencing token; hold it until
    /// interrupted (Ctrl-C), or run the command after `--` while holding it (with
    /// KEYVAL_LOCK_KEY and KEYVAL_FENCING_TOKEN set) and exit with its exit code.
    Lock(super::lock::LockArgs),
    /// Campaign in the election NAME with PROPOSAL, print the key and value once elected and
    /// lead until interrupted (then resign); without PROPOSAL (or with --listen), print each
    /// leader as it changes.
    Elect(super::lock::ElectArgs),
    /// Print every change to KEY (or a range, or a prefix) as it is committed, until
    /// interrupted: PUT/DELETE, the key, the value. Resumes by itself when a node fails.
    Watch(super::watch::WatchArgs),
    /// Hand leadership to voter ID and wait until it leads.
    TransferLeader {
        /// The voter to take over.
        id: u64,
    },
    /// Add, delete, inspect users; change passwords; grant and revoke roles.
    #[command(subcommand)]
    User(super::auth::UserCommand),
    /// Add, delete, inspect roles; grant and revoke their permissions.
    #[command(subcommand)]
    Role(super::auth::RoleCommand),
    /// Enable or disable auth, or print whether it is enabled.
    #[command(subcommand)]
    Auth(super::auth::AuthCommand),
}

/// The condition of `cas`: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ExpectArgs {
    /// The key's current value must be this.
    #[arg(long)]
    pub expect: Option<String>,
    /// The key must not exist.
    #[arg(long)]
    pub expect_absent: bool,
    /// The key's mod revision must be this.
    #[arg(long)]
    pub expect_revision: Option<u64>,
}

/// The per-attempt timeout `--attempt-timeout-ms` asks for, else `default`.
fn attempt_timeout(args: &KvctlArgs, default: Duration) -> Duration {
    args.attempt_timeout_ms
        .map_or(default, |attempt| Duration::from_millis(attempt.max(1)))
}

/// Whether `endpoint` looks like `HOST:PORT` (resolved later; a typo is a usage error now,
/// not a time-out).
fn valid_endpoint(endpoint: &str) -> bool {
    match endpoint.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// The TLS configuration `--cacert`, `--cert` and `--key` ask for.
fn client_tls(args: &KvctlArgs) -> Result<Option<crate::tls::ClientTls>, String> {
    match (&args.cacert, &args.tls_cert, &args.tls_key) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err("--cert and --key need --cacert (the CA to trust)".into()),
        (Some(ca), cert, key) => {
            let identity = cert.as_deref().zip(key.as_deref());
            crate::tls::ClientTls::new(ca, identity)
                .map(Some)
                .map_err(|error| error.to_string())
        }
    }
}

/// Runs kvctl; returns the process exit code.
pub fn run(args: KvctlArgs) -> i32 {
    let mut options = ClientOptions {
        request_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        ..ClientOptions::default()
    };
    options.attempt_timeout = attempt_timeout(&args, options.attempt_timeout);
    if let Some(bad) = args
        .endpoints
        .iter()
        .find(|endpoint| !valid_endpoint(endpoint))
    {
        eprintln!("kvctl: invalid endpoint {bad:?}: give HOST:PORT, e.g. 127.0.0.1:7379");
        return EXIT_USAGE;
    }
    options.tls = match client_tls(&args) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("kvctl: {error}");
            return EXIT_USAGE;
        }
    };
    if let Some(user) = &args.user {
        options.credentials = match super::auth::credentials(user) {
            Ok(credentials) => Some(credentials),
            Err(message) => {
                eprintln!("kvctl: {message}");
                return EXIT_USAGE;
            }
        };
    }
    let client = match Client::new(&args.endpoints, options.clone()) {
        Ok(client) => client,
        Err(error) => return fail(&error, args.json),
    };
    let json = args.json;
    let hex_keys = args.hex_keys;
    let usage = |message: String| {
        eprintln!("kvctl: {message}");
        EXIT_USAGE
    };
    let key = |key: String| key_bytes(&key, hex_keys);
    match args.command {
        Command::Put {
            key: name,
            value,
            from_file,
            lease,
            fencing_token,
        } => {
            let (name, value) = match (key(name), put_value(value, from_file.as_deref())) {
                (Ok(name), Ok(value)) => (name, value),
                (Err(message), _) | (_, Err(message)) => return usage(message),
            };
            if let Some(token) = fencing_token {
                return super::lock::fenced_put(&client, &name, &value, LogIndex(token), json);
            }
            match match lease {
                Some(lease) => client.put_with_lease(name, value, lease),
                None => client.put(name, value),
            } {
                Ok(metadata) => {
                    print_written(json, Some(&metadata));
                    EXIT_OK
                }
                Err(error) => fail(&error, json),
            }
        }
        Command::Get {
            key: name,
            end,
            prefix,
            limit,
            consistency,
            output,
        } if prefix || end.is_some() => {
            if output.output.is_some() {
                return usage("--output takes one key's value, not a range".into());
            }
            let start = match key(name) {
                Ok(start) => start,
                Err(message) => return usage(message),
            };
            let range = match end.map(key) {
                Some(Ok(end)) => KeyRange::between(start, end),
                Some(Err(message)) => return usage(message),
                None => KeyRange::prefix(&start),
            };
            scan(
                &client,
                range,
                limit as usize,
                consistency,
                json,
                (&output, hex_keys),
            )
        }
        Command::Get {
            key: name,
            consistency,
            output,
            ..
        } => {
            let bytes = match key(name.clone()) {
                Ok(bytes) => bytes,
                Err(message) => return usage(message),
            };
            get_one(&client, &name, bytes, consistency, &output, json)
        }
        Command::Del {
            key: name,
            end,
            prefix,
        } if hex_keys => {
            let start = match key(name) {
                Ok(start) => start,
                Err(message) => return usage(message),
            };
            let result = match end.map(key) {
                Some(Ok(end)) => client.delete_range(KeyRange::between(start, end)),
                Some(Err(message)) => return usage(message),
                None if prefix => client.delete_range(KeyRange::prefix(&start)),
                None => client.delete(start).map(u64::from),
            };
            match result {
                Ok(deleted) => {
                    if json {
                        println!("{}", json!({ "deleted": deleted }));
                    } else {
                        println!("{deleted}");
                    }
                    EXIT_OK
                }
                Err(error) => fail(&error, json),
            }
        }
        Command::Endpoint(EndpointCommand::Status) | Command::Status => status(&client, json),
        Command::Endpoint(EndpointCommand::Health) => health(&client, json),
        Command::Del { key, end, prefix } if prefix || end.is_some() => {
            let range = match end {
                Some(end) => KeyRange::between(key.into_bytes(), end.into_bytes()),
                None => KeyRange::prefix(key.as_bytes()),
            };
            match client.delete_range(range) {
                Ok(deleted) => {
                    if json {
                        println!("{}", json!({ "deleted": deleted }));
                    } else {
                        println!("{deleted}");
                    }
                    EXIT_OK
                }
                Err(error) => fail(&error, json),
            }
        }
        Command::Txn { file, interactive } => {
            match super::txn::input(file.as_deref(), interactive) {
                Ok(input) => super::txn::run(&client, &input, json),
                Err(code) => code,
            }
        }
        Command::Del { key, .. } => match client.delete(key.into_bytes()) {
            Ok(existed) => {
                if json {
                    println!("{}", json!({ "deleted": existed }));
                } else {
                    println!(
                        "{}",
                        if existed {
                            "deleted"
                        } else {
                            "(did not exist)"
                        }
                    );
                }
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
        Command::Cas {
            key,
            new,
            expect,
            delete,
        } => {
            let condition = if let Some(value) = expect.expect {
                Expect::Value(value.into_bytes())
            } else if let Some(revision) = expect.expect_revision {
                Expect::ModRevision(LogIndex(revision))
            } else {
                Expect::Absent
            };
            if new.is_none() && !delete {
                eprintln!("kvctl cas: give NEW or --delete");
                return EXIT_USAGE;
            }
            match client.cas(key.into_bytes(), condition, new.map(String::into_bytes)) {
                Ok(CasOutcome::Swapped { current }) => {
                    print_written(json, current.as_ref());
                    EXIT_OK
                }
                Ok(CasOutcome::Failed { current }) => {
                    if json {
                        println!(
                            "{}",
                            json!({ "swapped": false, "current": current.as_ref().map(versioned_json) })
                        );
                    } else {
                        match &current {
                            Some(versioned) => eprintln!(
                                "condition failed; current value {:?} (mod revision {})",
                                text(&versioned.value),
                                versioned.metadata.mod_revision.0
                            ),
                            None => eprintln!("condition failed; the key does not exist"),
                        }
                    }
                    EXIT_CAS_FAILED
                }
                Err(error) => fail(&error, json),
            }
        }
        Command::Scan {
            prefix,
            limit,
            consistency,
        } => {
            let range = if prefix.is_empty() {
                KeyRange::all()
            } else {
                KeyRange::prefix(prefix.as_bytes())
            };
            scan(
                &client,
                range,
                limit,
                consistency,
                json,
                (&ValueOutput::default(), hex_keys),
            )
        }
        Command::Bench(bench) => super::bench::run(&args.endpoints, &options, &bench, json),
        Command::Check(check) => super::check::run(&args.endpoints, &options, &check, json),
        Command::Member(member) => super::member::run(&client, &member, json),
        Command::TransferLeader { id } => super::member::transfer_leader(&client, id, json),
        Command::Lease(lease) => super::lease::run(&client, &lease, json),
        Command::Lock(lock) => super::lock::lock(&client, &lock, json),
        Command::Elect(elect) => super::lock::elect(&client, &elect, json),
        Command::Watch(watch) => super::watch::run(&client, &watch, json),
        Command::Snapshot(snapshot) => super::snapshot::run(
            &client,
            &snapshot,
            Duration::from_millis(args.timeout_ms.max(1)),
            json,
        ),
        Command::User(user) => super::auth::run_user(&client, user, json),
        Command::Role(role) => super::auth::run_role(&client, role, json),
        Command::Auth(auth) => super::auth::run_auth(&client, auth, json),
    }
}

/// Prints up to `limit` keys of `range` as KEY<tab>VALUE lines (or JSON).
fn scan(
    client: &Client,
    range: KeyRange,
    limit: usize,
    consistency: ConsistencyArg,
    json: bool,
    (output, hex_keys): (&ValueOutput, bool),
) -> i32 {
    let key_text = |key: &[u8]| {
        if hex_keys {
            hex::encode(key)
        } else {
            text(key)
        }
    };
    match client.scan_with(range, limit, consistency.into()) {
        Ok(read) => {
            if json {
                let entries: Vec<_> = read
                    .value
                    .entries
                    .iter()
                    .map(|(key, versioned)| {
                        json!({ "key": key_text(key), "value": output.render(&versioned.value), "metadata": metadata_json(&versioned.metadata) })
                    })
                    .collect();
                println!("{}", json!({ "entries": entries, "more": read.value.more }));
            } else {
                for (key, versioned) in &read.value.entries {
                    println!("{}\t{}", key_text(key), output.render(&versioned.value));
                }
                if read.value.more {
                    eprintln!("(more keys follow; raise --limit)");
                }
            }
            EXIT_OK
        }
        Err(error) => fail(&error, json),
    }
}

fn status(client: &Client, json: bool) -> i32 {
    let statuses = client.cluster_status();
    // The leader's configuration, to mark members that were removed.
    let members = client.members().ok().map(|reply| reply.membership);
    let is_removed = |id: crate::types::NodeId| {
        members.as_ref().is_some_and(|membership| {
            !membership.voters.contains(&id)
                && !membership.voters_outgoing.contains(&id)
                && !membership.learners.contains(&id)
        })
    };
    let (mut unreachable, mut leader_known) = (0, false);
    let mut rows = Vec::new();
    if !json {
        println!(
            "{:<22} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}",
            "ADDRESS", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAPSHOT"
        );
    }
    for (endpoint, status) in &statuses {
        match status {
            Ok(status) => {
                leader_known |= status.leader.is_some();
                let removed = is_removed(status.id);
                let role = if removed {
                    "Removed".to_string()
                } else if status.failed {
                    "Failed".to_string()
                } else {
                    format!("{:?}", status.role)
                };
                let leader = status
                    .leader
                    .map(|leader| leader.0.to_string())
                    .unwrap_or_else(|| "-".into());
                if json {
                    rows.push(json!({
                        "endpoint": endpoint, "id": status.id.0, "role": format!("{:?}", status.role),
                        "removed": removed,
                        "term": status.term.0, "leader": status.leader.map(|leader| leader.0),
                        "leader_client_address": status.leader_client_address,
                        "commit": status.committed.0, "applied": status.applied.0,
                        "last_index": status.last_index.0, "address": status.client_address,
                        "failed": status.failed,
                        "snapshot_index": status.snapshot.map(|snapshot| snapshot.index.0),
                    }));
                } else {
                    let snapshot = status
                        .snapshot
                        .map(|snapshot| snapshot.index.0.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<22} {:>4} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10}",
                        status.client_address,
                        status.id.0,
                        role,
                        status.term.0,
                        leader,
                        status.committed.0,
                        status.applied.0,
                        status.last_index.0,
                        snapshot
                    );
                }
            }
            Err(error) => {
                unreachable += 1;
                let reason = unreachable_reason(error);
                if json {
                    rows.push(json!({ "endpoint": endpoint, "error": reason }));
                } else {
                    println!("{endpoint:<22} unreachable: {reason}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if !leader_known && !json {
        eprintln!("kvctl: no endpoint knows a leader");
    }
    if unreachable > 0 || !leader_known {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

/// Why an endpoint could not be reached, saying "connection refused" when it was (no process
/// listens there) rather than a time-out.
fn unreachable_reason(error: &ClientError) -> String {
    let text = error.to_string();
    if text.contains("Connection refused") || text.contains("ConnectionRefused") {
        format!("connection refused ({text})")
    } else {
        text
    }
}

/// `kvctl endpoint health`: each endpoint reachable, not failed and knowing a leader, and a
/// linearizable read served by the cluster.
fn health(client: &Client, json: bool) -> i32 {
    let mut healthy_all = true;
    let mut rows = Vec::new();
    for (endpoint, status) in client.cluster_status() {
        let began = std::time::Instant::now();
        let verdict = match status {
            Err(error) => Err(unreachable_reason(&error)),
            Ok(status) if status.failed => Err("its storage failed".to_string()),
            Ok(status) if status.leader.is_none() => Err("it knows no leader".to_string()),
            Ok(_) => client
                .get_with(
                    b"health".to_vec(),
                    crate::protocol::Consistency::Linearizable,
                )
                .map(|_| ())
                .map_err(|error| format!("a linearizable read failed: {error}")),
        };
        let took = began.elapsed();
        healthy_all &= verdict.is_ok();
        if json {
            rows.push(json!({
                "endpoint": endpoint,
                "health": verdict.is_ok(),
                "took_ms": took.as_secs_f64() * 1000.0,
                "error": verdict.as_ref().err(),
            }));
        } else {
            match &verdict {
                Ok(()) => println!(
                    "{endpoint} is healthy: successfully committed proposal: took = {:.3}ms",
                    took.as_secs_f64() * 1000.0
                ),
                Err(reason) => println!("{endpoint} is unhealthy: {reason}"),
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if healthy_all {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}

/// Prints an error and returns its exit code.
pub(super) fn fail(error: &ClientError, json: bool) -> i32 {
    let code = match error {
        ClientError::Indeterminate { .. } => EXIT_INDETERMINATE,
        error if super::auth::is_denial(error) => EXIT_DENIED,
        _ => EXIT_ERROR,
    };
    if json {
        println!(
            "{}",
            json!({ "error": error.to_string(), "indeterminate": error.is_indeterminate() })
        );
    } else {
        eprintln!("kvctl: {error}");
    }
    code
}

fn print_written(json: bool, metadata: Option<&Metadata>) {
    if json {
        println!(
            "{}",
            json!({ "ok": true, "metadata": metadata.map(metadata_json) })
        );
    } else {
        match metadata {
            Some(metadata) => println!(
                "OK (revision {}, version {})",
                metadata.mod_revision.0, metadata.version
            ),
            None => println!("OK (deleted)"),
        }
    }
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn metadata_json(metadata: &Metadata) -> serde_json::Value {
    json!({
        "create_revision": metadata.create_revision.0,
        "mod_revision": metadata.mod_revision.0,
        "version": metadata.version,
        "lease": metadata.lease.map(|lease| lease.0),
    })
}

fn versioned_json(versioned: &Versioned) -> serde_json::Value {
    json!({ "value": text(&versioned.value), "metadata": metadata_json(&versioned.metadata) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn attempt_timeout_flag_overrides_the_clients_default() {
        let default = Duration::from_secs(1);
        let args = KvctlArgs::try_parse_from(["kvctl", "get", "k"]).unwrap();
        assert_eq!(attempt_timeout(&args, default), default);
        let args = KvctlArgs::try_parse_from(["kvctl", "--attempt-timeout-ms", "200", "get", "k"])
            .unwrap();
        assert_eq!(attempt_timeout(&args, default), Duration::from_millis(200));
        assert!(
            KvctlArgs::try_parse_from(["kvctl", "--attempt-timeout-ms", "x", "get", "k"]).is_err()
        );
    }

    #[test]
    fn range_flags_of_get_and_del() {
        let args = KvctlArgs::try_parse_from(["kvctl", "get", "a", "--prefix"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Get {
                prefix: true,
                end: None,
                limit: 1000,
                ..
            }
        ));
        let args = KvctlArgs::try_parse_from(["kvctl", "del", "a", "c"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Del {
                prefix: false,
                end: Some(_),
                ..
            }
        ));
        assert!(KvctlArgs::try_parse_from(["kvctl", "del", "a", "c", "--prefix"]).is_err());
        assert!(
            KvctlArgs::try_parse_from(["kvctl", "get", "a", "--prefix", "--limit", "0"]).is_err()
        );
        let args = KvctlArgs::try_parse_from(["kvctl", "txn", "--file", "t.txt"]).unwrap();
        assert!(matches!(
            args.command,
            Command::Txn {
                file: Some(_),
                interactive: false
            }
        ));
    }
}
