//! `kvctl`: talk to a running cluster from the shell.
//!
//! Exit codes: 0 success, 1 error (unavailable, rejected, timed out…), 2 usage error,
//! 3 key not found (`get`), 4 compare-and-swap condition failed (`cas`), 5 the write's outcome
//! is unknown (`Indeterminate`: it may or may not have been applied; for `member` and
//! `transfer-leader`: the change may or may not have taken effect). `txn` exits 0 whichever
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
/// `cas`: the condition did not hold; nothing was written.
pub const EXIT_CAS_FAILED: i32 = 4;
/// A write's outcome is unknown: it may or may not have been applied.
pub const EXIT_INDETERMINATE: i32 = 5;

/// `kvctl`: read, write and inspect a keyval cluster.
#[derive(Debug, Parser)]
#[command(
    name = "kvctl",
    version,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not found (get), 4 cas condition failed, \
                  5 indeterminate (the write may or may not have been applied)."
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
    /// The command.
    #[command(subcommand)]
    pub command: Command,
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
        /// The value.
        value: String,
        /// The lease to attach the key to (its id as `lease grant` printed it).
        #[arg(long, value_parser = super::lease::parse_lease_id)]
        lease: Option<crate::kv::LeaseId>,
    },
    /// Print KEY's value (exit 3 if it does not exist); with END or --prefix, every key of
    /// the range as KEY<tab>VALUE lines (exit 0 even if there is none).
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
    /// Print every endpoint's status: id, role, term, leader, commit, applied, last index.
    Status,
    /// Measure throughput and latency (like redis-benchmark).
    Bench(BenchArgs),
    /// Take a snapshot now on the leader (or --node) and print the index it covers; with
    /// `save FILE`, write a consistent backup for `keyval restore`.
    Snapshot(SnapshotArgs),
    /// List, add, promote or remove members (one change at a time).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Grant, revoke, keep alive, inspect and list leases.
    #[command(subcommand)]
    Lease(super::lease::LeaseCommand),
    /// Hand leadership to voter ID and wait until it leads.
    TransferLeader {
        /// The voter to take over.
        id: u64,
    },
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
    options.tls = match client_tls(&args) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("kvctl: {error}");
            return EXIT_USAGE;
        }
    };
    let client = match Client::new(&args.endpoints, options.clone()) {
        Ok(client) => client,
        Err(error) => return fail(&error, args.json),
    };
    let json = args.json;
    match args.command {
        Command::Put { key, value, lease } => match match lease {
            Some(lease) => client.put_with_lease(key.into_bytes(), value.into_bytes(), lease),
            None => client.put(key.into_bytes(), value.into_bytes()),
        } {
            Ok(metadata) => {
                print_written(json, Some(&metadata));
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
        Command::Get {
            key,
            end,
            prefix,
            limit,
            consistency,
        } if prefix || end.is_some() => {
            let range = match end {
                Some(end) => KeyRange::between(key.into_bytes(), end.into_bytes()),
                None => KeyRange::prefix(key.as_bytes()),
            };
            scan(&client, range, limit as usize, consistency, json)
        }
        Command::Get {
            key, consistency, ..
        } => match client.get_with(key.clone().into_bytes(), consistency.into()) {
            Ok(read) => {
                let found = read.value.is_some();
                if json {
                    println!(
                        "{}",
                        json!({
                            "key": key,
                            "found": found,
                            "value": read.value.as_ref().map(|versioned| text(&versioned.value)),
                            "metadata": read.value.as_ref().map(|versioned| metadata_json(&versioned.metadata)),
                            "node": read.node.0,
                            "applied": read.applied.0,
                            "behind": read.behind,
                        })
                    );
                } else if let Some(versioned) = &read.value {
                    println!("{}", text(&versioned.value));
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
        },
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
            scan(&client, range, limit, consistency, json)
        }
        Command::Status => status(&client, json),
        Command::Bench(bench) => super::bench::run(&args.endpoints, &options, &bench, json),
        Command::Member(member) => super::member::run(&client, &member, json),
        Command::TransferLeader { id } => super::member::transfer_leader(&client, id, json),
        Command::Lease(lease) => super::lease::run(&client, &lease, json),
        Command::Snapshot(snapshot) => super::snapshot::run(
            &client,
            &snapshot,
            Duration::from_millis(args.timeout_ms.max(1)),
            json,
        ),
    }
}

/// Prints up to `limit` keys of `range` as KEY<tab>VALUE lines (or JSON).
fn scan(
    client: &Client,
    range: KeyRange,
    limit: usize,
    consistency: ConsistencyArg,
    json: bool,
) -> i32 {
    match client.scan_with(range, limit, consistency.into()) {
        Ok(read) => {
            if json {
                let entries: Vec<_> = read
                    .value
                    .entries
                    .iter()
                    .map(|(key, versioned)| {
                        json!({ "key": text(key), "value": text(&versioned.value), "metadata": metadata_json(&versioned.metadata) })
                    })
                    .collect();
                println!("{}", json!({ "entries": entries, "more": read.value.more }));
            } else {
                for (key, versioned) in &read.value.entries {
                    println!("{}\t{}", text(key), text(&versioned.value));
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
    let mut reachable = 0;
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
                reachable += 1;
                let leader = status
                    .leader
                    .map(|leader| leader.0.to_string())
                    .unwrap_or_else(|| "-".into());
                if json {
                    rows.push(json!({
                        "endpoint": endpoint, "id": status.id.0, "role": format!("{:?}", status.role),
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
                        format!("{:?}", status.role),
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
                if json {
                    rows.push(json!({ "endpoint": endpoint, "error": error.to_string() }));
                } else {
                    println!("{endpoint:<22} unreachable: {error}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if reachable == 0 {
        EXIT_ERROR
    } else {
        EXIT_OK
    }
}

/// Prints an error and returns its exit code.
pub(super) fn fail(error: &ClientError, json: bool) -> i32 {
    let code = match error {
        ClientError::Indeterminate { .. } => EXIT_INDETERMINATE,
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
