//! Web sessions stored under `examples/sessions/`, each attached to a lease of its own: a
//! request renews the session's lease (activity keeps it alive), an idle session vanishes by
//! itself when its TTL runs out — no cleanup job — and a logout revokes it at once.
//!
//! Run: `cargo run --example session_store` (three nodes in this process), or against a
//! running cluster: `KEYVAL_ENDPOINTS=127.0.0.1:7379 cargo run --example session_store`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use keyval::client::Client;
use keyval::kv::LeaseId;

/// Sessions expire after this long without a request (raised to the cluster's minimum).
const SESSION_TTL_SECONDS: u64 = 2;

/// How long to wait for an idle session to vanish: its TTL and a generous margin.
const EXPIRY_WAIT: Duration = Duration::from_secs(20);

/// A store of web sessions with a TTL.
struct SessionStore {
    client: Client,
}

impl SessionStore {
    fn key(id: &str) -> Vec<u8> {
        format!("examples/sessions/{id}").into_bytes()
    }

    /// Logs `user` in: a new session `id` with its own lease.
    fn login(&self, id: &str, user: &str) -> anyhow::Result<LeaseId> {
        let grant = self.client.lease_grant(SESSION_TTL_SECONDS)?;
        self.client
            .put_with_lease(Self::key(id), user.as_bytes().to_vec(), grant.lease)?;
        Ok(grant.lease)
    }

    /// A request in session `id`: returns its user if the session exists, renewing it.
    fn touch(&self, id: &str, lease: LeaseId) -> anyhow::Result<Option<String>> {
        let Some(session) = self.client.get(Self::key(id))? else {
            return Ok(None);
        };
        self.client.lease_keep_alive(lease)?;
        Ok(Some(String::from_utf8_lossy(&session.value).into_owned()))
    }

    /// Whether session `id` exists.
    fn exists(&self, id: &str) -> anyhow::Result<bool> {
        Ok(self.client.get(Self::key(id))?.is_some())
    }

    /// Logs out: revoking the lease deletes the session now.
    fn logout(&self, lease: LeaseId) -> anyhow::Result<()> {
        self.client.lease_revoke(lease)?;
        Ok(())
    }
}

/// Runs the example against `client`; returns how long the idle session lived.
pub fn run(client: &Client) -> anyhow::Result<Duration> {
    let store = SessionStore {
        client: client.clone(),
    };
    let started = Instant::now();
    let active = store.login("a1", "alice")?;
    store.login("b2", "bob")?;
    println!("alice (a1) and bob (b2) logged in, TTL {SESSION_TTL_SECONDS} s");
    // Alice keeps clicking; Bob went for coffee.
    while store.exists("b2")? {
        anyhow::ensure!(
            started.elapsed() < EXPIRY_WAIT,
            "bob's session never expired"
        );
        anyhow::ensure!(
            store.touch("a1", active)?.as_deref() == Some("alice"),
            "alice's active session vanished"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let lived = started.elapsed();
    println!("bob's idle session expired after {lived:?}; alice's is still there");
    anyhow::ensure!(
        lived >= Duration::from_secs(SESSION_TTL_SECONDS),
        "bob's session expired before its TTL"
    );
    anyhow::ensure!(store.exists("a1")?, "alice's session expired while active");
    store.logout(active)?;
    anyhow::ensure!(!store.exists("a1")?, "alice's session survived the logout");
    println!("alice logged out: her session is gone at once");
    Ok(lived)
}

fn main() -> anyhow::Result<()> {
    let cluster = support::ExampleCluster::start()?;
    run(&cluster.client()?)?;
    Ok(())
}
