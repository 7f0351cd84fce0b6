//! Authentication and authorization end to end, on clusters of real nodes and servers in
//! this process (client ports 5500–5599 on 127.0.0.1): a permission matrix of every request
//! kind × allowed / denied for a user with a prefix-limited role (a denial writes nothing),
//! root may do everything, `auth enable` needs root, permissions hold across a leader
//! failover and a snapshot install, tokens are invalidated by a password change, and wrong
//! passwords are answered ever later. Every wait is on a condition with a deadline.

mod server_support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientError, ClientOptions, Credentials};
use keyval::kv::auth::{AuthError, Permission};
use keyval::kv::{Compare, CompareOp, Expect, KeyRange, KvError, Operation, Txn, TxnOp};
use keyval::protocol::auth::{Needed, Password};
use keyval::protocol::{RequestBody, ResponseBody, ServerError};
use keyval::types::MemberAddress;
use keyval::NodeId;
use server_support::{wait_for, TestCluster};

/// The next free client port of this test binary's share of 5500–5599 (5500–5549).
fn local_address() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(5500);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 5550, "out of test ports 5500-5549");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("127.0.0.1:{port}");
        }
    }
}

fn cluster(size: usize) -> TestCluster {
    let addresses = (0..size).map(|_| local_address()).collect();
    TestCluster::start_at(addresses, false, |_| {})
}

fn client(cluster: &TestCluster, user: Option<(&str, &str)>) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(15),
        attempt_timeout: Duration::from_secs(3),
        credentials: user.map(|(name, password)| Credentials::new(name, password)),
        ..ClientOptions::default()
    };
    Client::new(&cluster.endpoints(), options).unwrap()
}

const ROOT: (&str, &str) = ("root", "root-password");
const ALICE: (&str, &str) = ("alice", "alice-password");

/// Users root (role root) and alice (role app: readwrite on prefix `app/`, read on key
/// `pub`), some data, then auth enabled.
fn set_up(admin: &Client) {
    admin.user_add(ROOT.0, Some(ROOT.1)).unwrap();
    admin.user_grant_role(ROOT.0, "root").unwrap();
    admin.role_add("app").unwrap();
    admin
        .role_grant_permission("app", Permission::ReadWrite, KeyRange::prefix(b"app/"))
        .unwrap();
    admin
        .role_grant_permission("app", Permission::Read, one_key(b"pub"))
        .unwrap();
    admin.user_add(ALICE.0, Some(ALICE.1)).unwrap();
    admin.user_grant_role(ALICE.0, "app").unwrap();
    admin.put(b"app/1".to_vec(), b"a".to_vec()).unwrap();
    admin.put(b"pub".to_vec(), b"p".to_vec()).unwrap();
    admin.put(b"secret/1".to_vec(), b"s".to_vec()).unwrap();
    admin.auth_enable().unwrap();
}

fn one_key(key: &[u8]) -> KeyRange {
    keyval::protocol::auth::single_key(key)
}

#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, ClientError>) {
    match result {
        Err(ClientError::Server(ServerError::PermissionDenied { user, .. })) => {
            assert_eq!(user, ALICE.0)
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

#[test]
fn auth_enable_is_refused_without_a_root_user_holding_the_root_role() {
    let cluster = cluster(1);
    cluster.wait_leader();
    let admin = client(&cluster, None);
    let refused = admin.auth_enable();
    assert!(
        matches!(
            refused,
            Err(ClientError::Rejected(KvError::Auth(AuthError::RootMissing)))
        ),
        "{refused:?}"
    );
    admin.user_add("root", Some("pw")).unwrap();
    assert!(admin.auth_enable().is_err(), "root without the root role");
    // Still disabled: everything is served as before.
    admin.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    admin.user_grant_role("root", "root").unwrap();
    admin.auth_enable().unwrap();
    assert!(matches!(
        admin.put(b"k".to_vec(), b"w".to_vec()),
        Err(ClientError::Server(ServerError::Unauthenticated { .. }))
    ));
    let root = client(&cluster, Some(("root", "pw")));
    // Root cannot be deleted, nor lose its role, while auth is enabled.
    assert!(root.user_delete("root").is_err());
    assert!(root.user_revoke_role("root", "root").is_err());
    root.auth_disable().unwrap();
    admin.put(b"k".to_vec(), b"x".to_vec()).unwrap();
}

#[test]
fn permission_matrix_for_a_prefix_limited_user() {
    let cluster = cluster(1);
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let anonymous = client(&cluster, None);
    let root = client(&cluster, Some(ROOT));
    let alice = client(&cluster, Some(ALICE));

    // Nobody unauthenticated.
    assert!(matches!(
        anonymous.get(b"pub".to_vec()),
        Err(ClientError::Server(ServerError::Unauthenticated { .. }))
    ));

    // get / scan (read)
    assert_eq!(alice.get(b"app/1".to_vec()).unwrap().unwrap().value, b"a");
    assert_eq!(alice.get(b"pub".to_vec()).unwrap().unwrap().value, b"p");
    assert_eq!(
        alice
            .scan(KeyRange::prefix(b"app/"), 10)
            .unwrap()
            .entries
            .len(),
        1
    );
    denied(alice.get(b"secret/1".to_vec()));
    denied(alice.scan(KeyRange::all(), 10));
    // watch (read, on the whole range)
    let mut watch = alice
        .watch(keyval::client::WatchOptions::prefix(b"app/"))
        .expect("alice watches her prefix");
    denied(alice.watch(keyval::client::WatchOptions::prefix(b"secret/")));
    denied(alice.watch(keyval::client::WatchOptions::all()));
    root.put(b"app/w".to_vec(), b"seen".to_vec()).unwrap();
    let seen = watch
        .recv_timeout(Duration::from_secs(15))
        .unwrap()
        .expect("alice's watch delivers");
    assert_eq!(seen.events[0].key, b"app/w");
    drop(watch);
    root.delete(b"app/w".to_vec()).unwrap();
    denied(alice.scan(KeyRange::prefix(b"app"), 10));

    // put / delete (write); read-only `pub` is not writable.
    alice.put(b"app/2".to_vec(), b"b".to_vec()).unwrap();
    assert!(alice.delete(b"app/2".to_vec()).unwrap());
    denied(alice.put(b"secret/2".to_vec(), b"x".to_vec()));
    denied(alice.put(b"pub".to_vec(), b"x".to_vec()));
    denied(alice.delete(b"secret/1".to_vec()));

    // cas (read and write: a failed comparison shows the value)
    alice
        .cas(
            b"app/1".to_vec(),
            Expect::Value(b"a".to_vec()),
            Some(b"a2".to_vec()),
        )
        .unwrap();
    denied(alice.cas(b"secret/1".to_vec(), Expect::Absent, Some(b"x".to_vec())));
    denied(alice.cas(b"pub".to_vec(), Expect::Absent, Some(b"x".to_vec())));

    // batch: one key outside denies all of it
    let put = |key: &[u8]| Operation::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
    };
    alice.batch(vec![put(b"app/3"), put(b"app/4")]).unwrap();
    denied(alice.batch(vec![put(b"app/5"), put(b"secret/5")]));

    // delete-range
    denied(alice.delete_range(KeyRange::all()));
    denied(alice.delete_range(KeyRange::prefix(b"secret/")));
    assert_eq!(alice.delete_range(KeyRange::prefix(b"app/4")).unwrap(), 1);

    // txn: compares and both branches
    let inside = Txn::new()
        .when([Compare::version("app/1", CompareOp::Greater, 0)])
        .then([TxnOp::put("app/6", "v")])
        .otherwise([TxnOp::get("app/1")]);
    assert!(alice.txn(inside).unwrap().succeeded);
    let compare_outside = Txn::new()
        .when([Compare::version("secret/1", CompareOp::Greater, 0)])
        .then([TxnOp::put("app/7", "v")]);
    denied(alice.txn(compare_outside));
    let else_outside = Txn::new()
        .when([Compare::version("app/1", CompareOp::Greater, 0)])
        .then([TxnOp::put("app/8", "v")])
        .otherwise([TxnOp::delete("secret/1")]);
    denied(alice.txn(else_outside));

    // leases: any user may grant; revoke needs write on every attached key.
    let own = alice.lease_grant(60).unwrap().lease;
    alice
        .put_with_lease(b"app/leased".to_vec(), b"v".to_vec(), own)
        .unwrap();
    assert_eq!(alice.lease_revoke(own).unwrap(), 1);
    let shared = alice.lease_grant(60).unwrap().lease;
    root.put_with_lease(b"secret/leased".to_vec(), b"v".to_vec(), shared)
        .unwrap();
    denied(alice.lease_revoke(shared));
    denied(alice.put_with_lease(b"secret/other".to_vec(), b"v".to_vec(), shared));

    // snapshots, membership, auth administration: root only.
    let leader = cluster.address(cluster.wait_leader());
    denied(alice.take_snapshot(&leader));
    denied(alice.members());
    let address = MemberAddress {
        peer: "127.0.0.1:1".into(),
        client: "127.0.0.1:2".into(),
    };
    denied(alice.add_member(NodeId(9), address.clone(), false));
    denied(alice.user_add("mallory", Some("x")));
    denied(alice.role_grant_permission("app", Permission::ReadWrite, KeyRange::all()));
    // A user may look at itself, and at the status.
    alice
        .auth_request(keyval::protocol::auth::AuthRequest::UserGet {
            name: "alice".into(),
        })
        .unwrap();
    alice
        .auth_request(keyval::protocol::auth::AuthRequest::Status)
        .unwrap();

    // Nothing denied was written.
    assert_eq!(root.get(b"secret/1".to_vec()).unwrap().unwrap().value, b"s");
    assert_eq!(root.get(b"pub".to_vec()).unwrap().unwrap().value, b"p");
    for absent in [
        &b"secret/2"[..],
        b"secret/5",
        b"app/5",
        b"app/7",
        b"secret/other",
    ] {
        assert!(root.get(absent.to_vec()).unwrap().is_none(), "{absent:?}");
    }
    assert!(root.get(b"secret/leased".to_vec()).unwrap().is_some());
    assert!(root.get(b"app/8".to_vec()).unwrap().is_none());

    // Root may do everything.
    root.take_snapshot(&leader).unwrap();
    root.members().unwrap();
    root.add_member(NodeId(9), address, false).unwrap();
    root.remove_member(NodeId(9)).unwrap();
    root.delete_range(KeyRange::prefix(b"secret/")).unwrap();
    assert!(root.lease_revoke(shared).is_ok());
    root.put(b"anything".to_vec(), b"v".to_vec()).unwrap();
}

#[test]
fn a_denial_names_the_user_the_key_and_the_permission() {
    let cluster = cluster(1);
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let alice = client(&cluster, Some(ALICE));
    let error = alice.put(b"secret/9".to_vec(), b"v".to_vec()).unwrap_err();
    let ClientError::Server(ServerError::PermissionDenied { user, needed }) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(user, "alice");
    assert_eq!(
        *needed,
        Needed::Keys {
            range: one_key(b"secret/9"),
            permission: Permission::Write
        }
    );
    let message = error.to_string();
    assert!(
        message.contains("alice") && message.contains("secret/9") && message.contains("write"),
        "{message}"
    );
}

#[test]
fn role_and_password_changes_take_effect_at_once() {
    let cluster = cluster(1);
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let root = client(&cluster, Some(ROOT));
    let alice = client(&cluster, Some(ALICE));
    alice.put(b"app/x".to_vec(), b"1".to_vec()).unwrap();
    root.role_revoke_permission("app", KeyRange::prefix(b"app/"))
        .unwrap();
    assert!(wait_for(|| matches!(
        alice.put(b"app/x".to_vec(), b"2".to_vec()),
        Err(ClientError::Server(ServerError::PermissionDenied { .. }))
    )));
    root.role_grant_permission("app", Permission::ReadWrite, KeyRange::prefix(b"app/"))
        .unwrap();
    assert!(wait_for(|| alice
        .put(b"app/x".to_vec(), b"3".to_vec())
        .is_ok()));

    // A password change invalidates the old token: the client's connection is refused and
    // re-authenticating with the old password fails.
    root.user_change_password("alice", "new-password").unwrap();
    let refused = alice.put(b"app/x".to_vec(), b"4".to_vec());
    assert!(
        matches!(
            refused,
            Err(ClientError::Server(ServerError::AuthenticationFailed))
        ),
        "{refused:?}"
    );
    let renewed = client(&cluster, Some(("alice", "new-password")));
    renewed.put(b"app/x".to_vec(), b"5".to_vec()).unwrap();
    root.user_delete("alice").unwrap();
    assert!(renewed.put(b"app/x".to_vec(), b"6".to_vec()).is_err());
}

#[test]
fn an_expired_token_is_refused_and_the_client_authenticates_again() {
    let addresses = vec![local_address()];
    let cluster = TestCluster::start_at(addresses, false, |options| {
        options.auth_token_ttl = Duration::from_secs(1);
    });
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let address = cluster.address(0);
    let token = match server_support::raw_call(
        &address,
        RequestBody::Authenticate {
            user: ALICE.0.into(),
            password: Password(ALICE.1.into()),
        },
        5000,
    )
    .result
    {
        Ok(ResponseBody::Authenticated(reply)) => reply.token,
        other => panic!("{other:?}"),
    };
    let present = || {
        server_support::raw_call(
            &address,
            RequestBody::PresentToken {
                token: token.clone(),
            },
            5000,
        )
        .result
    };
    assert!(present().is_ok());
    assert!(wait_for(|| matches!(
        present(),
        Err(ServerError::Unauthenticated { .. })
    )));
    // A forged token (another user's name under alice's MAC) is refused.
    let mut forged = token.clone();
    forged.user = "root".into();
    let result =
        server_support::raw_call(&address, RequestBody::PresentToken { token: forged }, 5000);
    assert!(matches!(
        result.result,
        Err(ServerError::Unauthenticated { .. })
    ));
    // The client renews its token transparently across expiries.
    let alice = client(&cluster, Some(ALICE));
    alice.put(b"app/t".to_vec(), b"1".to_vec()).unwrap();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        alice.put(b"app/t".to_vec(), b"2".to_vec()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wrong_passwords_on_one_connection_are_answered_ever_later() {
    let cluster = cluster(1);
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let address = cluster.address(0);
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = keyval::protocol::FrameReader::new();
    let mut attempt = |request_id: u64, password: &str| {
        use std::io::Write;
        let mut bytes = Vec::new();
        keyval::protocol::write_frame(
            &keyval::protocol::RequestFrame {
                request_id,
                timeout_ms: 10_000,
                body: RequestBody::Authenticate {
                    user: ALICE.0.into(),
                    password: Password(password.into()),
                },
            },
            &mut bytes,
        )
        .unwrap();
        let started = Instant::now();
        stream.write_all(&bytes).unwrap();
        let frame: keyval::protocol::ResponseFrame = reader.read_frame(&mut stream).unwrap();
        (frame.result, started.elapsed())
    };
    let mut delays = Vec::new();
    for request_id in 1..=4 {
        let (result, took) = attempt(request_id, "wrong");
        assert_eq!(result, Err(ServerError::AuthenticationFailed));
        delays.push(took);
    }
    // 100, 200, 400, 800 ms at least (verification time comes on top).
    for (k, took) in delays.iter().enumerate() {
        let floor = keyval::server::auth::failure_delay(k as u32 + 1);
        assert!(*took >= floor, "attempt {k}: {took:?} < {floor:?}");
    }
    // The floors double, so the delays grow whatever the verification costs on a loaded
    // machine: the fourth waited at least 800 ms, eight times the first floor.
    assert!(
        delays[3] >= keyval::server::auth::failure_delay(1) * 8,
        "{delays:?}"
    );
    // The right password is answered without a penalty, and resets the count.
    let (result, took) = attempt(5, ALICE.1);
    assert!(
        matches!(result, Ok(ResponseBody::Authenticated(_))),
        "{result:?}"
    );
    assert!(took < keyval::server::auth::failure_delay(5), "{took:?}");
}

#[test]
fn permissions_hold_across_a_leader_failover_and_a_snapshot_install() {
    let mut cluster = cluster(3);
    cluster.wait_leader();
    set_up(&client(&cluster, None));
    let root = client(&cluster, Some(ROOT));
    let alice = client(&cluster, Some(ALICE));
    alice.put(b"app/before".to_vec(), b"v".to_vec()).unwrap();
    denied(alice.put(b"secret/before".to_vec(), b"v".to_vec()));

    // Failover: stop the leader; the new one enforces the same state.
    let old_leader = cluster.wait_leader();
    cluster.stop(old_leader);
    assert!(wait_for(|| alice
        .put(b"app/after".to_vec(), b"v".to_vec())
        .is_ok()));
    denied(alice.put(b"secret/after".to_vec(), b"v".to_vec()));
    assert!(matches!(
        client(&cluster, None).get(b"app/after".to_vec()),
        Err(ClientError::Server(ServerError::Unauthenticated { .. }))
    ));

    // Snapshot install: compact the log on the live nodes, then a new node catches up by
    // snapshot and enforces the auth state it carried.
    let live: Vec<usize> = (0..3).filter(|k| *k != old_leader).collect();
    for &k in &live {
        let address = cluster.address(k);
        root.take_snapshot_and_wait(&address, Instant::now() + Duration::from_secs(20))
            .unwrap();
    }
    let joiner_address = local_address();
    let join_client = root.clone();
    let position = cluster.start_joiner(NodeId(4), joiner_address.clone(), |peer| {
        let address = MemberAddress {
            peer: peer.to_string(),
            client: joiner_address.clone(),
        };
        join_client
            .add_member(NodeId(4), address, false)
            .unwrap()
            .membership
    });
    let joiner = cluster.nodes[position].as_ref().unwrap().node.clone();
    assert!(wait_for(|| {
        joiner.with_state_machine(|kv| kv.auth().is_enabled() && kv.get(b"app/after").is_some())
    }));
    let state = joiner.with_state_machine(|kv| kv.auth());
    assert!(state.allows("alice", &one_key(b"app/x"), Permission::Write));
    assert!(!state.allows("alice", &one_key(b"secret/x"), Permission::Read));
    // Its own server enforces it too (a stale read served by the joiner itself).
    let direct = Client::new(
        &[joiner_address.as_str()],
        ClientOptions {
            credentials: Some(Credentials::new(ALICE.0, ALICE.1)),
            read_consistency: keyval::protocol::Consistency::Stale,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert!(wait_for(|| direct
        .get(b"app/after".to_vec())
        .is_ok_and(|found| found.is_some())));
    denied(direct.get(b"secret/1".to_vec()));
}
