//! What the `keyval` and `kvctl` binaries are made of, kept in the library so it is tested and
//! documented like the rest: flag definitions (clap, with `KEYVAL_*` environment twins), the
//! cluster specification, the node runner, the kvctl commands and the benchmark.

pub mod auth;
pub mod backup;
pub mod bench;
mod bench_coordination;
pub mod check;
pub mod config_file;
mod join;
pub mod kvctl;
pub mod lease;
pub mod lock;
pub mod logging;
pub mod member;
pub mod node;
mod pipeline;
pub mod restore;
mod snapshot;
pub mod trace;
pub mod txn;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::types::{MemberAddress, Membership, NodeId};

/// The default client listen address of a node started without flags.
pub const CLIENT_LISTEN_DEFAULT: &str = "127.0.0.1:7379";

/// The default peer listen address of a node started without flags.
pub const PEER_LISTEN_DEFAULT: &str = "127.0.0.1:7380";

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Where its peers reach it.
    pub peer_address: SocketAddr,
    /// Where clients reach it (as written, so a host name survives for redirects).
    pub client_address: String,
}

/// The initial cluster: every member by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The members.
    pub members: BTreeMap<NodeId, Member>,
}

impl fmt::Display for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (id, member) in &self.members {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(
                f,
                "{}={}/{}",
                id.0, member.peer_address, member.client_address
            )?;
        }
        Ok(())
    }
}

impl ClusterSpec {
    /// Parses `1=127.0.0.1:7380/127.0.0.1:7379,2=...`: each member's id, peer address and
    /// client address. Ids start at 1 and appear once.
    pub fn parse(spec: &str) -> Result<ClusterSpec, String> {
        let mut members = BTreeMap::new();
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (id, addresses) = item.split_once('=').ok_or_else(|| {
                format!("cluster member {item:?} is not ID=PEER_ADDRESS/CLIENT_ADDRESS")
            })?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("cluster member {item:?}: {id:?} is not a node id"))?;
            if id == 0 {
                return Err(format!("cluster member {item:?}: node ids start at 1"));
            }
            let (peer, client) = addresses.split_once('/').ok_or_else(|| {
                format!("cluster member {item:?}: expected PEER_ADDRESS/CLIENT_ADDRESS")
            })?;
            let peer_address = resolve(peer.trim())
                .map_err(|error| format!("cluster member {item:?}: peer address: {error}"))?;
            resolve(client.trim())
                .map_err(|error| format!("cluster member {item:?}: client address: {error}"))?;
            let member = Member {
                peer_address,
                client_address: client.trim().to_string(),
            };
            if members.insert(NodeId(id), member).is_some() {
                return Err(format!("node id {id} appears twice in the cluster"));
            }
        }
        if members.is_empty() {
            return Err("the cluster has no members".into());
        }
        Ok(ClusterSpec { members })
    }

    /// The configuration of these members as voters, with their addresses: addresses travel
    /// in configuration entries, so members that join later learn how to reach these.
    pub fn membership(&self) -> Membership {
        Membership::with_addresses(
            self.members
                .iter()
                .map(|(id, member)| {
                    let address = MemberAddress {
                        peer: member.peer_address.to_string(),
                        client: member.client_address.clone(),
                    };
                    (*id, address)
                })
                .collect(),
        )
    }

    /// A cluster of one node.
    pub fn single(id: NodeId, peer_address: SocketAddr, client_address: String) -> ClusterSpec {
        let mut members = BTreeMap::new();
        members.insert(
            id,
            Member {
                peer_address,
                client_address,
            },
        );
        ClusterSpec { members }
    }
}

/// Resolves `host:port` to its first socket address.
pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|error| format!("{address:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_three_node_spec() {
        let spec = ClusterSpec::parse(
            "1=127.0.0.1:7380/127.0.0.1:7379, 2=127.0.0.1:7382/127.0.0.1:7381,3=127.0.0.1:7384/localhost:7383",
        )
        .unwrap();
        assert_eq!(spec.members.len(), 3);
        assert_eq!(spec.members[&NodeId(3)].client_address, "localhost:7383");
        assert_eq!(ClusterSpec::parse(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (spec, needle) in [
            ("", "no members"),
            ("1=127.0.0.1:1", "PEER_ADDRESS/CLIENT_ADDRESS"),
            ("x=127.0.0.1:1/127.0.0.1:2", "not a node id"),
            ("0=127.0.0.1:1/127.0.0.1:2", "start at 1"),
            (
                "1=127.0.0.1:1/127.0.0.1:2,1=127.0.0.1:3/127.0.0.1:4",
                "twice",
            ),
            ("1=nonsense/127.0.0.1:2", "peer address"),
            ("127.0.0.1:1", "ID=PEER"),
        ] {
            let error = ClusterSpec::parse(spec).unwrap_err();
            assert!(error.contains(needle), "{spec:?}: {error}");
        }
    }
}
