//! Membership and leadership requests of the client protocol against real nodes over TCP on
//! 127.0.0.1: list, add (learner, then voter), promote, remove, transfer through the blocking
//! `Client` with redirects to a member that joined later, clear refusals, and a slow change
//! that must not hold up the connection's other requests.

mod server_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use keyval::client::{Client, ClientError, ClientOptions};
use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame, ServerError,
};
use keyval::raft::RoleKind;
use keyval::{MemberAddress, NodeId};

use server_support::{free_address, raw_call, wait_for, TestCluster};

fn client(endpoints: &[String], timeout: Duration) -> Client {
    let options = ClientOptions {
        request_timeout: timeout,
        ..ClientOptions::default()
    };
    Client::connect(endpoints, options).expect("connect")
}

fn refusal(error: ClientError) -> String {
    match error {
        ClientError::Server(ServerError::Refused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_member_joins_is_promoted_leads_and_is_removed_through_the_client() {
    let mut cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    let admin = client(&cluster.endpoints(), Duration::from_secs(20));
    let listed = admin.members().unwrap();
    assert_eq!(listed.leader, Some(NodeId(leader as u64 + 1)));
    assert_eq!(
        listed.node,
        NodeId(leader as u64 + 1),
        "served by the leader"
    );
    assert_eq!(listed.membership.voters.len(), 3);
    assert!(listed.membership.learners.is_empty());
    admin.put(b"before".to_vec(), b"join".to_vec()).unwrap();

    // n4 joins as a learner, as `keyval --join` does.
    let client_address = free_address().to_string();
    let join_client = admin.clone();
    let join_address = client_address.clone();
    let position = cluster.start_joiner(NodeId(4), client_address.clone(), move |peer| {
        let reply = join_client
            .add_member(
                NodeId(4),
                MemberAddress {
                    peer: peer.to_string(),
                    client: join_address,
                },
                false,
            )
            .expect("add n4 as a learner");
        assert!(reply.membership.learners.contains(&NodeId(4)));
        reply.membership
    });
    let joined = &cluster.nodes[position].as_ref().unwrap().node;
    assert!(
        wait_for(|| joined.read_local(|kv| kv.get(b"before").is_some()).1),
        "the learner receives the log"
    );
    // Adding it again at the same addresses is harmless.
    let again = admin
        .add_member(
            NodeId(4),
            admin.members().unwrap().membership.addresses[&NodeId(4)].clone(),
            false,
        )
        .unwrap();
    assert!(again.membership.learners.contains(&NodeId(4)));

    let promoted = admin.promote_member(NodeId(4)).unwrap();
    assert!(promoted.membership.voters.contains(&NodeId(4)));
    assert!(!promoted.membership.is_joint(), "C(new) is committed");

    // n4 takes over; a client that knows only n1..n3 is redirected to n4's client address,
    // which the other nodes know from the configuration alone.
    assert_eq!(admin.transfer_leader(NodeId(4)).unwrap(), NodeId(4));
    assert_eq!(joined.status().role, RoleKind::Leader);
    let old_endpoints: Vec<String> = (0..3).map(|k| cluster.address(k)).collect();
    let fresh = client(&old_endpoints, Duration::from_secs(10));
    fresh.put(b"after".to_vec(), b"transfer".to_vec()).unwrap();
    assert_eq!(fresh.leader().as_deref(), Some(client_address.as_str()));
    // Transferring to the leader itself succeeds at once.
    assert_eq!(admin.transfer_leader(NodeId(4)).unwrap(), NodeId(4));

    // Remove the leader: it hands over and steps down; the rest go on.
    let removed = admin.remove_member(NodeId(4)).unwrap();
    assert!(!removed.membership.contains(NodeId(4)));
    assert_eq!(removed.membership.voters.len(), 3);
    let listed = fresh.members().unwrap();
    assert!(listed.leader.is_some_and(|leader| leader != NodeId(4)));
    assert!(!listed.membership.contains(NodeId(4)));
    fresh.put(b"after".to_vec(), b"removal".to_vec()).unwrap();
    assert_eq!(
        fresh.get(b"after".to_vec()).unwrap().unwrap().value,
        b"removal"
    );
}

#[test]
fn refusals_say_what_is_wrong_and_change_nothing() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let admin = client(&cluster.endpoints(), Duration::from_secs(5));
    let reason = refusal(admin.remove_member(NodeId(9)).unwrap_err());
    assert!(reason.contains("not a member"), "{reason}");
    let reason = refusal(admin.transfer_leader(NodeId(9)).unwrap_err());
    assert!(reason.contains("not a voting member"), "{reason}");
    let reason = refusal(admin.promote_member(NodeId(9)).unwrap_err());
    assert!(reason.contains("not a learner"), "{reason}");
    for (address, needle) in [
        (("", "127.0.0.1:1"), "empty"),
        (("127.0.0.1", "127.0.0.1:1"), "host:port"),
        (("127.0.0.1:1", "127.0.0.1:99999"), "host:port"),
        (("127.0.0.1:1", "a b:1"), "whitespace"),
    ] {
        let address = MemberAddress {
            peer: address.0.into(),
            client: address.1.into(),
        };
        let reason = refusal(admin.add_member(NodeId(5), address, true).unwrap_err());
        assert!(reason.contains(needle), "{reason}");
    }
    let long = format!("{}:1", "h".repeat(300));
    let reason = refusal(
        admin
            .add_member(
                NodeId(5),
                MemberAddress {
                    peer: long,
                    client: "127.0.0.1:1".into(),
                },
                true,
            )
            .unwrap_err(),
    );
    assert!(reason.contains("at most"), "{reason}");
    let reason = refusal(
        admin
            .add_member(
                NodeId(0),
                MemberAddress {
                    peer: "127.0.0.1:1".into(),
                    client: "127.0.0.1:2".into(),
                },
                true,
            )
            .unwrap_err(),
    );
    assert!(reason.contains("id 0"), "{reason}");
    let members = admin.members().unwrap().membership;
    assert_eq!(members.voters.len(), 3);
    assert!(members.learners.is_empty());

    // A follower redirects member requests to the leader's client address.
    let follower = cluster.follower();
    let leader = cluster.wait_leader();
    let frame = raw_call(&cluster.address(follower), RequestBody::Members, 1000);
    match frame.result {
        Err(ServerError::NotLeader {
            leader_id,
            leader_client_address,
        }) => {
            assert_eq!(leader_id, Some(NodeId(leader as u64 + 1)));
            assert_eq!(leader_client_address, Some(cluster.address(leader)));
        }
        other => panic!("expected a redirect, got {other:?}"),
    }
}

#[test]
fn a_slow_change_does_not_hold_up_the_connections_other_requests() {
    let cluster = TestCluster::start(3, false);
    let leader = cluster.wait_leader();
    // n7 is never started: it is added as a learner at once, but never answers, so the
    // promotion waits for the whole deadline.
    let mut stream = TcpStream::connect(cluster.address(leader)).unwrap();
    let mut out = Vec::new();
    let add = RequestFrame {
        request_id: 1,
        timeout_ms: 2_000,
        body: RequestBody::AddMember {
            id: NodeId(7),
            address: MemberAddress {
                peer: free_address().to_string(),
                client: free_address().to_string(),
            },
            voter: true,
        },
    };
    write_frame(&add, &mut out).unwrap();
    let status = RequestFrame {
        request_id: 2,
        timeout_ms: 1_000,
        body: RequestBody::Status,
    };
    write_frame(&status, &mut out).unwrap();
    stream.write_all(&out).unwrap();
    let mut frames = FrameReader::new();
    let first: ResponseFrame = frames.read_frame(&mut stream).unwrap();
    assert_eq!(first.request_id, 2, "the status is answered first");
    assert!(matches!(first.result, Ok(ResponseBody::Status(_))));
    let second: ResponseFrame = frames.read_frame(&mut stream).unwrap();
    assert_eq!(second.request_id, 1);
    match second.result {
        Err(ServerError::Busy { reason }) => {
            assert!(reason.contains("not caught up"), "{reason}")
        }
        other => panic!("expected NotCaughtUp as Busy, got {other:?}"),
    }
    // The learner was added (the first half of the request), the promotion was not.
    let admin = client(&cluster.endpoints(), Duration::from_secs(5));
    let members = admin.members().unwrap().membership;
    assert!(members.learners.contains(&NodeId(7)));
    assert!(!members.is_voter(NodeId(7)));
    admin.remove_member(NodeId(7)).unwrap();
}
