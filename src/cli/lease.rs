//! `kvctl lease grant|revoke|keep-alive|ttl|list`, and the lease id format shared with
//! `kvctl put --lease` and `kvctl txn`.
//!
//! Lease ids are printed in hexadecimal without a prefix, as etcdctl prints them, and read
//! back the same way: `1f` and `0x1f` are lease 31; a decimal id is written with a `0d`
//! prefix (`0d31`). Lease 0 is "no lease" and is never granted.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::kv::{KvError, LeaseId};

use super::kvctl::{fail, text, EXIT_ERROR, EXIT_OK};

/// `kvctl lease` subcommands.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds and print its id (raised to the cluster's minimum TTL).
    Grant {
        /// The time to live, in seconds.
        ttl: u64,
    },
    /// Revoke lease ID, deleting every key attached to it in one revision.
    Revoke {
        /// The lease (hex as printed, 0x-prefixed hex, or 0d-prefixed decimal).
        #[arg(value_parser = parse_lease_id)]
        id: LeaseId,
    },
    /// Keep lease ID alive: renew it every third of its TTL until interrupted (Ctrl-C),
    /// printing each renewal; with --once, renew it once.
    KeepAlive {
        /// The lease.
        #[arg(value_parser = parse_lease_id)]
        id: LeaseId,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Print lease ID's granted TTL and the time it has left; with --keys, the keys attached.
    Ttl {
        /// The lease.
        #[arg(value_parser = parse_lease_id)]
        id: LeaseId,
        /// List the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    List,
}

/// Parses a lease id: hexadecimal as kvctl prints it (optionally `0x`-prefixed), or decimal
/// with a `0d` prefix. Refuses 0 ("no lease").
pub fn parse_lease_id(text: &str) -> Result<LeaseId, String> {
    let text = text.trim();
    let parsed = if let Some(decimal) = text.strip_prefix("0d") {
        decimal.parse::<u64>()
    } else {
        let hex = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        u64::from_str_radix(hex, 16)
    };
    match parsed {
        Ok(0) => Err("lease 0 means no lease; no lease has id 0".into()),
        Ok(id) => Ok(LeaseId(id)),
        Err(_) => Err(format!(
            "{text:?} is not a lease id: hexadecimal as kvctl prints it (1f, 0x1f) or decimal \
             with 0d (0d31)"
        )),
    }
}

/// A lease id as kvctl prints it.
pub fn format_lease_id(lease: LeaseId) -> String {
    format!("{:x}", lease.0)
}

/// The JSON form of a lease id: the number, and its printed form.
fn id_json(lease: LeaseId) -> serde_json::Value {
    json!({ "id": lease.0, "id_hex": format_lease_id(lease) })
}

/// Runs one `kvctl lease` command; returns the exit code.
pub fn run(client: &Client, command: &LeaseCommand, json: bool) -> i32 {
    match command {
        LeaseCommand::Grant { ttl } => match client.lease_grant(*ttl) {
            Ok(grant) => {
                if json {
                    let mut answer = id_json(grant.lease);
                    answer["ttl"] = json!(grant.ttl_seconds);
                    println!("{answer}");
                } else {
                    println!(
                        "lease {} granted with TTL({}s)",
                        format_lease_id(grant.lease),
                        grant.ttl_seconds
                    );
                }
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
        LeaseCommand::Revoke { id } => match client.lease_revoke(*id) {
            Ok(deleted) => {
                if json {
                    let mut answer = id_json(*id);
                    answer["deleted"] = json!(deleted);
                    println!("{answer}");
                } else {
                    println!(
                        "lease {} revoked ({deleted} keys deleted)",
                        format_lease_id(*id)
                    );
                }
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
        LeaseCommand::KeepAlive { id, once } => keep_alive(client, *id, *once, json),
        LeaseCommand::Ttl { id, keys } => match client.lease_time_to_live(*id, *keys) {
            Ok(reply) => {
                let remaining_seconds = reply.remaining_ms.div_ceil(1000);
                if json {
                    let mut answer = id_json(*id);
                    answer["granted_ttl"] = json!(reply.granted_ttl_seconds);
                    answer["ttl"] = json!(remaining_seconds);
                    answer["remaining_ms"] = json!(reply.remaining_ms);
                    if *keys {
                        let listed: Vec<String> = reply.keys.iter().map(|key| text(key)).collect();
                        answer["keys"] = json!(listed);
                    }
                    println!("{answer}");
                } else {
                    let mut line = format!(
                        "lease {} granted with TTL({}s), remaining({remaining_seconds}s)",
                        format_lease_id(*id),
                        reply.granted_ttl_seconds
                    );
                    if *keys {
                        let listed: Vec<String> = reply.keys.iter().map(|key| text(key)).collect();
                        line.push_str(&format!(", attached keys([{}])", listed.join(" ")));
                    }
                    println!("{line}");
                }
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
        LeaseCommand::List => match client.lease_list() {
            Ok(leases) => {
                if json {
                    let listed: Vec<_> = leases.iter().map(|lease| id_json(*lease)).collect();
                    println!("{}", json!({ "leases": listed }));
                } else {
                    println!("found {} leases", leases.len());
                    for lease in leases {
                        println!("{}", format_lease_id(lease));
                    }
                }
                EXIT_OK
            }
            Err(error) => fail(&error, json),
        },
    }
}

/// The shortest pause between renewals.
const KEEP_ALIVE_PERIOD_MIN: Duration = Duration::from_millis(100);

/// Renews `lease` once, or every third of its TTL until the process is interrupted. A
/// renewal that fails for want of a leader is retried; a lease that is gone ends with exit 1.
fn keep_alive(client: &Client, lease: LeaseId, once: bool, json: bool) -> i32 {
    loop {
        let pause = match client.lease_keep_alive(lease) {
            Ok(ttl_seconds) => {
                if json {
                    let mut answer = id_json(lease);
                    answer["ttl"] = json!(ttl_seconds);
                    println!("{answer}");
                } else {
                    println!(
                        "lease {} keepalived with TTL({ttl_seconds})",
                        format_lease_id(lease)
                    );
                }
                if once {
                    return EXIT_OK;
                }
                (Duration::from_secs(ttl_seconds) / 3).max(KEEP_ALIVE_PERIOD_MIN)
            }
            Err(ClientError::Rejected(KvError::LeaseNotFound { .. })) => {
                if json {
                    let mut answer = id_json(lease);
                    answer["error"] = json!("lease expired or revoked");
                    println!("{answer}");
                } else {
                    eprintln!("kvctl: lease {} expired or revoked", format_lease_id(lease));
                }
                return EXIT_ERROR;
            }
            Err(error) if once => return fail(&error, json),
            Err(error) => {
                eprintln!(
                    "kvctl: renewing lease {}: {error}; retrying",
                    format_lease_id(lease)
                );
                KEEP_ALIVE_PERIOD_MIN * 5
            }
        };
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_read_back_as_printed() {
        for id in [1, 10, 31, 0x694d_7c8b_0b0c_2b0a, u64::MAX] {
            let printed = format_lease_id(LeaseId(id));
            assert_eq!(parse_lease_id(&printed), Ok(LeaseId(id)));
        }
        assert_eq!(parse_lease_id("0x1f"), Ok(LeaseId(31)));
        assert_eq!(parse_lease_id("1f"), Ok(LeaseId(31)));
        assert_eq!(parse_lease_id("10"), Ok(LeaseId(16)));
        assert_eq!(parse_lease_id("0d31"), Ok(LeaseId(31)));
        assert!(parse_lease_id("0").is_err());
        assert!(parse_lease_id("0d0").is_err());
        assert!(parse_lease_id("xyz").is_err());
        assert!(parse_lease_id("").is_err());
    }
}
