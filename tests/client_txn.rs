//! Transactions, prefix reads and range deletes through the public `Client` against a real
//! three-node cluster over TCP: a lock-style "create if absent" transaction, one revision for
//! all writes of a transaction, prefix reads and deletes, limits refused before proposing,
//! and a compare-and-increment loop that keeps counting exactly across a leader stop.
//! Method: `server_support::TestCluster`, waiting on conditions with generous deadlines.

mod server_support;

use keyval::client::{Client, ClientError};
use keyval::kv::{Compare, CompareOp, KeyRange, KvError, Txn, TxnOp, TxnOpResponse};

use server_support::TestCluster;

/// Takes `lock` for `owner` if nobody holds it; else answers the holder.
fn acquire(client: &Client, owner: &str) -> (bool, Option<Vec<u8>>) {
    let response = client
        .txn(
            Txn::new()
                .when([Compare::create_revision("lock", CompareOp::Equal, 0)])
                .then([TxnOp::put("lock", owner)])
                .otherwise([TxnOp::get("lock")]),
        )
        .expect("txn");
    let holder = match response.responses.as_slice() {
        [TxnOpResponse::Get(holder)] => holder.as_ref().map(|held| held.value.clone()),
        [TxnOpResponse::Put(_)] => None,
        other => panic!("unexpected answers {other:?}"),
    };
    (response.succeeded, holder)
}

#[test]
fn transactions_prefix_reads_and_range_deletes_through_the_client() {
    let cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = cluster.client();

    assert_eq!(acquire(&client, "alice"), (true, None));
    assert_eq!(acquire(&client, "bob"), (false, Some(b"alice".to_vec())));

    // Every write of one transaction carries its revision.
    let response = client
        .txn(Txn::new().then([
            TxnOp::put("config/a", "1"),
            TxnOp::put("config/b", "2"),
            TxnOp::put("configuration", "x"),
            TxnOp::delete("lock").with_previous(),
        ]))
        .expect("txn");
    assert!(response.succeeded);
    for key in ["config/a", "config/b", "configuration"] {
        let read = client.get(key.into()).expect("get").expect("exists");
        assert_eq!(read.metadata.mod_revision, response.revision, "{key}");
    }
    let [.., TxnOpResponse::Delete { deleted, previous }] = response.responses.as_slice() else {
        panic!("{:?}", response.responses)
    };
    assert_eq!(*deleted, 1);
    assert_eq!(previous[0].1.value, b"alice");

    let page = client.get_prefix(b"config/", 10).expect("get_prefix");
    let keys: Vec<_> = page.entries.iter().map(|(key, _)| key.clone()).collect();
    assert_eq!(keys, [b"config/a".to_vec(), b"config/b".to_vec()]);
    assert!(!page.more);
    let first = client.get_prefix(b"config", 1).expect("get_prefix");
    assert!(first.more);

    assert_eq!(client.delete_prefix(b"config/").expect("delete_prefix"), 2);
    assert_eq!(client.delete_prefix(b"config/").expect("delete_prefix"), 0);
    assert!(client.get(b"configuration".to_vec()).unwrap().is_some());
    let removed = client
        .delete_range(KeyRange::between(b"a".to_vec(), b"d".to_vec()))
        .expect("delete_range");
    assert_eq!(removed, 1);
    assert!(client
        .get_range(KeyRange::all(), 10)
        .unwrap()
        .entries
        .is_empty());

    // Limits are checked before proposing.
    let too_many = Txn::new().then((0..=keyval::kv::TXN_OPERATIONS_MAX).map(|_| TxnOp::get("k")));
    assert!(matches!(
        client.txn(too_many),
        Err(ClientError::Rejected(KvError::TxnTooLarge { .. }))
    ));
}

#[test]
fn a_compare_and_increment_loop_counts_exactly_across_a_leader_stop() {
    let mut cluster = TestCluster::start(3, false);
    cluster.wait_leader();
    let client = cluster.client();
    let increments = 10;
    let mut done = 0;
    let mut stopped = false;
    while done < increments {
        if done == increments / 2 && !stopped {
            let leader = cluster.wait_leader();
            cluster.stop(leader);
            stopped = true;
        }
        let current = client.get(b"counter".to_vec()).expect("get");
        let (compare, value) = match current {
            Some(versioned) => {
                let value: u64 = String::from_utf8(versioned.value).unwrap().parse().unwrap();
                let revision = versioned.metadata.mod_revision.0;
                let compare = Compare::mod_revision("counter", CompareOp::Equal, revision);
                (compare, value)
            }
            None => (Compare::version("counter", CompareOp::Equal, 0), 0),
        };
        let response = client
            .txn(
                Txn::new()
                    .when([compare])
                    .then([TxnOp::put("counter", (value + 1).to_string())]),
            )
            .expect("txn (a retry under the same session applies once)");
        if response.succeeded {
            done += 1;
        }
    }
    let read = client.get(b"counter".to_vec()).unwrap().unwrap();
    assert_eq!(read.value, increments.to_string().into_bytes());
    assert_eq!(read.metadata.version, increments);
}
