//! Three real `keyval` processes on loopback with fsync on: writes and reads through `kvctl`
//! and `Client`, kill -9 of the leader, failover with the client carrying on, every
//! acknowledged write readable afterwards, and the killed node catching up after a restart.
//! Also: bad bytes on a peer port close that connection and the cluster keeps serving.

mod process_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keyval::protocol::Consistency;

use process_support::{wait_for, ProcessCluster};

#[test]
fn three_processes_survive_kill_of_the_leader_and_the_victim_catches_up() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    let leader = cluster.wait_leader(&client);

    // kvctl round trip, with its exit codes.
    let put = cluster.kvctl(&["put", "greeting", "hello"]);
    assert!(put.status.success(), "{put:?}");
    let get = cluster.kvctl(&["get", "greeting"]);
    assert!(get.status.success(), "{get:?}");
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    assert_eq!(cluster.kvctl(&["get", "absent"]).status.code(), Some(3));
    let cas = cluster.kvctl(&["cas", "greeting", "bye", "--expect", "nope"]);
    assert_eq!(cas.status.code(), Some(4), "{cas:?}");
    let status = cluster.kvctl(&["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("Leader"));
    // Both benchmark drivers run and report.
    for driver in ["pipelined", "threads"] {
        let bench = cluster.kvctl(&[
            "--json",
            "bench",
            "mixed",
            "--clients",
            "4",
            "--requests",
            "200",
            "--keys",
            "50",
            "--driver",
            driver,
        ]);
        assert!(bench.status.success(), "{bench:?}");
        let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
        assert_eq!(report["operations"], 200, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }

    // Acknowledged writes before and after kill -9 of the leader.
    let mut acknowledged = Vec::new();
    for k in 0..30u32 {
        let key = format!("k{k}").into_bytes();
        client.put(key.clone(), k.to_le_bytes().to_vec()).unwrap();
        acknowledged.push((key, k));
    }
    cluster.nodes[leader].kill();
    for k in 30..60u32 {
        let key = format!("k{k}").into_bytes();
        // The client rides out the election; an Indeterminate write is simply not counted.
        match client.put(key.clone(), k.to_le_bytes().to_vec()) {
            Ok(_) => acknowledged.push((key, k)),
            Err(error) => assert!(error.is_indeterminate(), "{error}"),
        }
    }
    assert!(acknowledged.len() >= 50, "too few writes acknowledged");
    let new_leader = cluster.wait_leader(&client);
    assert_ne!(new_leader, leader);
    for (key, k) in &acknowledged {
        let value = client
            .get(key.clone())
            .unwrap()
            .expect("acknowledged write lost");
        assert_eq!(value.value, k.to_le_bytes());
    }

    // Restart the killed node: it catches up (a stale read from it sees the last write).
    cluster.restart(leader);
    let (last_key, last_value) = acknowledged.last().unwrap().clone();
    let victim = keyval::client::Client::new(
        &[cluster.client_addresses[leader].clone()],
        Default::default(),
    )
    .unwrap();
    assert!(
        wait_for(|| victim
            .get_with(last_key.clone(), Consistency::Stale)
            .is_ok_and(|read| read
                .value
                .is_some_and(|versioned| versioned.value == last_value.to_le_bytes()))),
        "the restarted node did not catch up"
    );
    let out = cluster.kvctl(&["--json", "get", "greeting"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"value\":\"hello\""));
}

/// Whether the peer port closes a connection after `bytes`.
fn peer_port_closes_after(address: &str, bytes: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(bytes).is_err() {
        return true;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            }
        }
    }
}

#[test]
fn bad_input_on_peer_and_client_ports_leaves_the_cluster_serving() {
    let cluster = ProcessCluster::start(3);
    let client = cluster.client();
    let leader = cluster.wait_leader(&client);
    client.put(b"before".to_vec(), b"1".to_vec()).unwrap();

    let mut oversized = u32::MAX.to_le_bytes().to_vec();
    oversized.extend_from_slice(&[0; 4]);
    let garbage: Vec<u8> = (0..200u32).map(|k| (k * 7919 % 251) as u8).collect();
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&[0; 4 + 10]);
    for position in 0..3 {
        for bytes in [&oversized, &garbage, &truncated] {
            assert!(peer_port_closes_after(
                &cluster.peer_addresses[position],
                bytes
            ));
            assert!(peer_port_closes_after(
                &cluster.client_addresses[position],
                bytes
            ));
        }
    }
    // Same leader, still serving writes and reads.
    client.put(b"after".to_vec(), b"2".to_vec()).unwrap();
    assert_eq!(client.get(b"before".to_vec()).unwrap().unwrap().value, b"1");
    assert_eq!(cluster.wait_leader(&client), leader);
    for position in 0..3 {
        let log = std::fs::read_to_string(&cluster.nodes[position].log).unwrap();
        assert!(
            log.contains("closing client connection"),
            "no logged reason:\n{log}"
        );
    }
}

/// SIGTERM on the leader: it finishes in flight, hands leadership to the most up-to-date
/// follower (thesis §3.10), exits 0, and the cluster keeps serving under the new leader.
#[test]
fn sigterm_on_the_leader_hands_leadership_over() {
    let mut cluster = ProcessCluster::start(3);
    let client = cluster.client();
    let leader = cluster.wait_leader(&client);
    client.put(b"before".to_vec(), b"1".to_vec()).expect("put");
    let exit = cluster.nodes[leader].terminate();
    assert_eq!(exit, Some(0), "graceful stop exits 0");
    let log = std::fs::read_to_string(&cluster.nodes[leader].log).expect("leader log");
    assert!(
        log.contains("handed leadership over"),
        "the leader did not hand over:\n{log}"
    );
    let successor = cluster.wait_leader(&client);
    assert_ne!(successor, leader);
    client
        .put(b"after".to_vec(), b"2".to_vec())
        .expect("put after handover");
    let value = client
        .get(b"before".to_vec())
        .expect("get")
        .expect("present");
    assert_eq!(value.value, b"1");
}
