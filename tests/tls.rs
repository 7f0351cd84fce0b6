//! TLS on the client port, with real certificates made here (rcgen): clients that trust the
//! node's CA are served; plaintext, an unknown CA and a missing client certificate are
//! refused while the node keeps serving; a rotated certificate is taken without a restart
//! and a broken one is refused, keeping the old. The `keyval` / `kvctl` flags are checked
//! with real processes. The TLS-wrapped client port is fuzzed: random bytes, mutated and
//! spliced ClientHellos, and garbage inside a completed session close only their connection.

mod cert_support;
mod process_support;
mod server_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cert_support::Ca;
use keyval::client::{Client, ClientOptions};
use keyval::protocol::RequestBody;
use keyval::server::ServerOptions;
use keyval::tls::{ClientAuth, ClientTls, ServerTls, ServerTlsFiles};
use process_support::free_port;
use server_support::{wait_for, TestCluster};

/// What the TLS tests ask of the shared CA beyond certificates.
impl Ca {
    fn client(&self, identity: Option<(&Path, &Path)>) -> ClientOptions {
        ClientOptions {
            tls: Some(ClientTls::new(&self.cert_path(), identity).expect("client TLS")),
            request_timeout: Duration::from_secs(4),
            ..ClientOptions::default()
        }
    }
}

/// A cluster whose servers speak TLS with certificates from `ca`.
fn tls_cluster(ca: &Arc<Ca>, trusted_clients: Option<&Arc<Ca>>, auth: ClientAuth) -> TestCluster {
    let (ca, trusted) = (Arc::clone(ca), trusted_clients.cloned());
    TestCluster::start_with(3, false, move |options: &mut ServerOptions| {
        let ip = options.listen.ip().to_string();
        let port = options.listen.port();
        let (cert, key) = ca.sign(&format!("node-{port}"), &[&ip, "localhost"]);
        let files = ServerTlsFiles {
            cert,
            key,
            trusted_ca: trusted.as_ref().map(|ca| ca.cert_path()),
            client_auth: auth,
        };
        options.tls = Some(Arc::new(ServerTls::new(files).expect("server TLS")));
    })
}

fn must_fail(client: Result<Client, keyval::client::ClientError>) -> String {
    match client.and_then(|client| client.put(b"k".to_vec(), b"v".to_vec())) {
        Ok(_) => panic!("a write got through"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn clients_trusting_the_ca_are_served_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::new(dir.path(), "ca"));
    let cluster = tls_cluster(&ca, None, ClientAuth::None);
    let client = Client::connect(&cluster.endpoints(), ca.client(None)).expect("connect");
    for k in 0..200u32 {
        client
            .put(format!("key{k}").into_bytes(), vec![b'v'; 100])
            .expect("put over TLS");
    }
    // Many threads pipelining on the one TLS connection.
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let client = client.clone();
            scope.spawn(move || {
                for k in 0..50u32 {
                    let key = format!("t{thread}-{k}").into_bytes();
                    client.put(key.clone(), b"x".to_vec()).expect("put");
                    assert!(client.get(key).expect("get").is_some());
                }
            });
        }
    });
    // A large value crosses many TLS records.
    let large = vec![7u8; 900 * 1024];
    client
        .put(b"large".to_vec(), large.clone())
        .expect("large put");
    assert_eq!(client.get(b"large".to_vec()).unwrap().unwrap().value, large);

    // Plaintext to a TLS port: the connection is closed as bad input, nothing else is hurt.
    let leader = cluster.wait_leader();
    let address = cluster.address(leader);
    let before = cluster.nodes[leader].as_ref().unwrap().server.stats();
    let plain =
        std::panic::catch_unwind(|| server_support::raw_call(&address, RequestBody::Status, 1000));
    assert!(
        plain.is_err(),
        "a plaintext request was answered on a TLS port"
    );
    assert!(wait_for(|| {
        cluster.nodes[leader]
            .as_ref()
            .unwrap()
            .server
            .stats()
            .connections_closed_bad_input
            > before.connections_closed_bad_input
    }));
    client
        .put(b"after".to_vec(), b"plaintext".to_vec())
        .expect("still serving");
}

#[test]
fn an_unknown_ca_or_a_missing_client_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::new(dir.path(), "ca"));
    let other = Arc::new(Ca::new(dir.path(), "other"));
    let cluster = tls_cluster(&ca, Some(&ca), ClientAuth::Required);
    let endpoints = cluster.endpoints();

    // The client does not trust the node's CA.
    let error = must_fail(Client::connect(&endpoints, other.client(None)));
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    // The node requires a client certificate and gets none, or one from another CA.
    must_fail(Client::connect(&endpoints, ca.client(None)));
    let (stranger_cert, stranger_key) = other.sign("stranger", &["client"]);
    must_fail(Client::connect(
        &endpoints,
        ca.client(Some((&stranger_cert, &stranger_key))),
    ));
    // A certificate from the trusted CA is served.
    let (cert, key) = ca.sign("client", &["client"]);
    let client = Client::connect(&endpoints, ca.client(Some((&cert, &key)))).expect("connect");
    client.put(b"k".to_vec(), b"v".to_vec()).expect("put");
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old-ca");
    let new_ca = Ca::new(dir.path(), "new-ca");
    let (cert, key) = old_ca.sign("node", &["127.0.0.1", "localhost"]);
    let tls = Arc::new(
        ServerTls::new(ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            trusted_ca: None,
            client_auth: ClientAuth::None,
        })
        .unwrap(),
    );
    let node_tls = Arc::clone(&tls);
    let cluster = TestCluster::start_with(1, false, move |options: &mut ServerOptions| {
        options.listen = "127.0.0.1:0".parse().unwrap();
        options.client_addresses.clear();
        options.tls = Some(Arc::clone(&node_tls));
    });
    cluster.wait_leader();
    let address = cluster.nodes[0]
        .as_ref()
        .unwrap()
        .server
        .local_addr()
        .to_string();
    let endpoints = vec![address];
    let old_client = Client::connect(&endpoints, old_ca.client(None)).expect("old CA");
    old_client.put(b"before".to_vec(), b"1".to_vec()).unwrap();
    must_fail(Client::connect(&endpoints, new_ca.client(None)));

    // Rotate: the node picks the new files up by itself while clients keep writing.
    new_ca.sign("node", &["127.0.0.1", "localhost"]);
    assert!(
        wait_for(|| Client::connect(&endpoints, new_ca.client(None))
            .and_then(|client| client.put(b"rotated".to_vec(), b"2".to_vec()))
            .is_ok()),
        "the rotated certificate was never served"
    );
    // A connection made before the rotation keeps working.
    old_client
        .put(b"old connection".to_vec(), b"3".to_vec())
        .unwrap();

    // A broken certificate is refused; the current one stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(!tls.reload(), "a broken certificate was taken");
    let client = Client::connect(&endpoints, new_ca.client(None)).expect("still the new one");
    client.put(b"after".to_vec(), b"4".to_vec()).unwrap();
}

#[test]
fn keyval_and_kvctl_speak_tls_with_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = ca.sign("node", &["127.0.0.1", "localhost"]);
    let (peer, client) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let mut node = process_support::NodeProcess::spawn(
        vec![
            "--id".into(),
            "1".into(),
            "--cluster".into(),
            format!("1=127.0.0.1:{peer}/{endpoint}"),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--cert-file".into(),
            cert.display().to_string(),
            "--key-file".into(),
            key.display().to_string(),
        ],
        dir.path().join("node.log"),
        None,
    );
    let ca_path = ca.cert_path().display().to_string();
    let kvctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(["--endpoints", &endpoint])
            .args(args)
            .output()
            .expect("kvctl")
    };
    assert!(
        process_support::wait_for(|| kvctl(&["--cacert", &ca_path, "put", "k", "v"])
            .status
            .success()),
        "kvctl put over TLS never succeeded"
    );
    let got = kvctl(&["--cacert", &ca_path, "get", "k"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
    let bench = kvctl(&[
        "--cacert",
        &ca_path,
        "bench",
        "put",
        "--clients",
        "4",
        "--requests",
        "200",
    ]);
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    // Without --cacert kvctl speaks plaintext and fails; a missing CA file is a usage error.
    assert!(!kvctl(&["--timeout-ms", "2000", "get", "k"])
        .status
        .success());
    let missing = kvctl(&["--cacert", "/nonexistent/ca.pem", "get", "k"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ca.pem"));
    node.kill();
}

mod peers {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use keyval::tls::{PeerTls, PeerTlsFiles};
    use keyval::transport::tcp::{TcpConfig, TcpTransport};
    use keyval::NodeId;

    use super::{free_port, Ca};

    type Inbound = crossbeam_channel::Receiver<(NodeId, String)>;

    /// A transport for node `id` listening on `address`, knowing `peers`, with `cert`/`key`
    /// from `ca` checked against `ca_trusted`.
    fn start(
        id: u64,
        address: SocketAddr,
        peers: &[(u64, SocketAddr)],
        files: (std::path::PathBuf, std::path::PathBuf),
        trusted: &Ca,
        allowed: &[&str],
    ) -> (TcpTransport<String>, Inbound) {
        let tls = PeerTls::new(PeerTlsFiles {
            cert: files.0,
            key: files.1,
            trusted_ca: trusted.cert_path(),
            allowed_names: allowed.iter().map(|name| name.to_string()).collect(),
        })
        .expect("peer TLS");
        let peers: BTreeMap<NodeId, SocketAddr> = peers
            .iter()
            .map(|(id, address)| (NodeId(*id), *address))
            .collect();
        let mut config = TcpConfig::new(NodeId(id), 7, address, peers);
        config.tls = Some(Arc::new(tls));
        config.backoff_max = Duration::from_millis(100);
        let (sender, receiver) = crossbeam_channel::bounded(1024);
        (
            TcpTransport::start(config, sender).expect("start"),
            receiver,
        )
    }

    fn address(ip: &str) -> SocketAddr {
        format!("{ip}:{}", free_port()).parse().unwrap()
    }

    /// Sends until `inbound` gets a message from `from`, or gives up after a while.
    fn delivered(sender: &TcpTransport<String>, to: u64, inbound: &Inbound, from: u64) -> bool {
        for attempt in 0..100 {
            sender.send(NodeId(to), format!("hello {attempt}"));
            if let Ok((who, _)) = inbound.recv_timeout(Duration::from_millis(100)) {
                assert_eq!(who, NodeId(from));
                return true;
            }
        }
        false
    }

    #[test]
    fn peers_speak_mutual_tls_and_refuse_other_cas_names_identities_and_expired_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(dir.path(), "peer-ca");
        let other = Ca::new(dir.path(), "other-ca");
        let (a1, a2, a3, a4, a5, a6) = (
            address("127.0.0.1"),
            address("127.0.0.2"),
            address("127.0.0.3"),
            address("127.0.0.4"),
            address("127.0.0.5"),
            address("127.0.0.6"),
        );
        let everyone = [(1, a1), (2, a2), (3, a3), (4, a4), (5, a5), (6, a6)];
        let one = ca.sign("n1", &["127.0.0.1", "node"]);
        // Node 2 accepts certificates named "node" only.
        let (two, two_inbound) = start(
            2,
            a2,
            &everyone,
            ca.sign("n2", &["127.0.0.2", "node"]),
            &ca,
            &["node"],
        );
        let (one_transport, _one_inbound) = start(1, a1, &everyone, one.clone(), &ca, &["node"]);
        assert!(
            delivered(&one_transport, 2, &two_inbound, 1),
            "a peer with a good certificate was not heard"
        );

        // A certificate from another CA.
        let (stranger, _) = start(
            3,
            a3,
            &everyone,
            other.sign("n3", &["127.0.0.3", "node"]),
            &ca,
            &[],
        );
        // A certificate from the CA with a name outside the allow-list.
        let (outsider, _) = start(
            4,
            a4,
            &everyone,
            ca.sign("n4", &["127.0.0.4", "intruder"]),
            &ca,
            &[],
        );
        // Node 1's own certificate, presented by a process claiming to be node 5.
        let (impostor, _) = start(5, a5, &everyone, one, &ca, &[]);
        // A certificate from the CA, with the right name, that expired.
        let expired = ca.sign_valid("n6", &["127.0.0.6", "node"], true);
        let (lapsed, _) = start(6, a6, &everyone, expired, &ca, &[]);
        let rejected_before = two.stats().connections_rejected;
        for _ in 0..20 {
            stranger.send(NodeId(2), "from 3".into());
            outsider.send(NodeId(2), "from 4".into());
            impostor.send(NodeId(2), "from 5".into());
            lapsed.send(NodeId(2), "from 6".into());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            super::wait_for(|| two.stats().connections_rejected >= rejected_before + 4),
            "not every bad peer was refused: {:?}",
            two.stats()
        );
        while let Ok((from, message)) = two_inbound.try_recv() {
            assert_eq!(from, NodeId(1), "a refused peer got {message:?} through");
        }
        // The good peer is still heard.
        assert!(delivered(&one_transport, 2, &two_inbound, 1));
    }
}

#[test]
fn a_three_node_cluster_runs_with_mutual_tls_on_both_ports() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let spec = ports
        .iter()
        .enumerate()
        .map(|(k, (peer, client))| format!("{}=127.0.0.1:{peer}/127.0.0.1:{client}", k + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for k in 0..3 {
        let (cert, key) = ca.sign(&format!("n{k}"), &["127.0.0.1", "keyval-node"]);
        let path = |p: &PathBuf| p.display().to_string();
        nodes.push(process_support::NodeProcess::spawn(
            vec![
                "--id".into(),
                (k + 1).to_string(),
                "--cluster".into(),
                spec.clone(),
                "--data-dir".into(),
                dir.path().join(format!("data{k}")).display().to_string(),
                "--cert-file".into(),
                path(&cert),
                "--key-file".into(),
                path(&key),
                "--trusted-ca-file".into(),
                path(&ca.cert_path()),
                "--client-cert-auth".into(),
                "--peer-cert-file".into(),
                path(&cert),
                "--peer-key-file".into(),
                path(&key),
                "--peer-trusted-ca-file".into(),
                path(&ca.cert_path()),
                "--peer-cert-allowed-cn".into(),
                "keyval-node".into(),
            ],
            dir.path().join(format!("n{k}.log")),
            None,
        ));
    }
    let (cert, key) = ca.sign("app", &["app"]);
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(_, client)| format!("127.0.0.1:{client}"))
        .collect();
    let client = Client::connect(&endpoints, ca.client(Some((&cert, &key)))).expect("connect");
    assert!(
        wait_for(|| client.put(b"k".to_vec(), b"over mTLS".to_vec()).is_ok()),
        "no write committed over mutual TLS"
    );
    // Every node applies it: replication went over the TLS peer port.
    for endpoint in &endpoints {
        assert!(wait_for(|| {
            client
                .get_with(b"k".to_vec(), keyval::protocol::Consistency::Stale)
                .ok()
                .and_then(|read| read.value)
                .is_some()
                && client
                    .status(endpoint)
                    .is_ok_and(|status| status.applied.0 >= 2)
        }));
    }
    drop(nodes);
}

#[test]
fn keyval_refuses_an_exposed_port_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_keyval"))
            .args(["--id", "1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--peer-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--client-listen",
                &format!("0.0.0.0:{}", free_port()),
            ])
            .args(extra)
            .output()
            .expect("keyval")
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("without TLS") && said.contains("--insecure"),
        "{said}"
    );
}

/// A rustls client configuration trusting `ca` (PEM), for hand-driven TLS sessions.
fn raw_tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Fuzzes the TLS-wrapped client port: random bytes, and real ClientHellos cut, flipped and
/// spliced at random (seeded, printed), each on its own connection, then garbage frames
/// inside a completed TLS session. Every bad connection is closed; none panics the server
/// or stops it serving a good client.
#[test]
fn garbage_and_mutated_handshakes_on_a_tls_port_close_only_their_connection() {
    use rand::{Rng, SeedableRng};
    use std::io::{Read, Write};
    let seed: u64 = std::env::var("KEYVAL_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (KEYVAL_SEED={seed} replays the inputs)");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(Ca::new(dir.path(), "ca"));
    let cluster = tls_cluster(&ca, None, ClientAuth::None);
    let leader = cluster.wait_leader();
    let address = cluster.address(leader);
    let config = raw_tls_config(&ca.cert_path());
    let hello = {
        let mut session =
            rustls::ClientConnection::new(Arc::clone(&config), "localhost".try_into().unwrap())
                .unwrap();
        let mut bytes = Vec::new();
        session.write_tls(&mut bytes).unwrap();
        bytes
    };
    for case in 0..300 {
        let input: Vec<u8> = match case % 3 {
            0 => (0..random.random_range(1..2048))
                .map(|_| random.random())
                .collect(),
            1 => {
                let mut mutated = hello.clone();
                for _ in 0..random.random_range(1..8) {
                    let at = random.random_range(0..mutated.len());
                    mutated[at] ^= random.random::<u8>() | 1;
                }
                mutated
            }
            _ => {
                let cut = random.random_range(0..hello.len());
                let mut spliced = hello[..cut].to_vec();
                spliced.extend((0..random.random_range(0..512)).map(|_| random.random::<u8>()));
                spliced
            }
        };
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let _ = stream.write_all(&input);
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
    }
    // Garbage inside a completed session: the frame decoder refuses it.
    for _ in 0..20 {
        let session =
            rustls::ClientConnection::new(Arc::clone(&config), "localhost".try_into().unwrap())
                .unwrap();
        let socket = std::net::TcpStream::connect(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(session, socket);
        let garbage: Vec<u8> = (0..random.random_range(8..4096))
            .map(|_| random.random())
            .collect();
        let _ = tls.write_all(&garbage);
        let mut sink = [0u8; 4096];
        // Closed (an error or the end of the stream): never a hang, never an answer.
        let _ = tls.read(&mut sink);
    }
    let client = Client::connect(&cluster.endpoints(), ca.client(None)).expect("connect");
    client
        .put(b"still".to_vec(), b"serving".to_vec())
        .expect("the node still serves TLS clients");
    let stats = cluster.nodes[leader].as_ref().unwrap().server.stats();
    assert!(
        stats.connections_closed_bad_input >= 20,
        "bad connections were not closed as bad input: {stats:?}"
    );
}
