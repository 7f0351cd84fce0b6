//! A distributed lock with fencing: several workers, each with its own session, take the
//! lock `examples/lock` in turn and write a shared resource through `fenced_put` with their
//! guard's fencing token. The tokens strictly increase from holder to holder; at the end a
//! write with an old holder's token — what a holder paused past its lease would send — is
//! refused by the storage-side check.
//!
//! Run: `cargo run --example lock` (three nodes in this process), or against a running
//! cluster: `KEYVAL_ENDPOINTS=127.0.0.1:7379 cargo run --example lock`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use keyval::client::Client;
use keyval::recipes::{fenced_put, FencedPut, Mutex, Session};
use keyval::LogIndex;
use parking_lot::Mutex as Shared;

/// The resource the lock protects.
const RESOURCE: &[u8] = b"examples/lock-resource";
/// Workers, each its own session.
const WORKERS: usize = 4;
/// Times each worker takes the lock.
const ROUNDS: usize = 2;

/// Runs the example against `client`; returns the tokens in the order they were granted.
pub fn run(client: &Client) -> anyhow::Result<Vec<LogIndex>> {
    let granted = Arc::new(Shared::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let client = client.clone();
            let granted = Arc::clone(&granted);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let session = Session::with_ttl(&client, 10)?;
                let mutex = Mutex::new(&session, "examples/lock");
                for round in 0..ROUNDS {
                    let guard = mutex.lock()?;
                    let token = guard.fencing_token();
                    granted.lock().push(token);
                    let value = format!("worker {worker} round {round}");
                    let outcome = fenced_put(&client, RESOURCE, value.as_bytes(), token)?;
                    anyhow::ensure!(
                        matches!(outcome, FencedPut::Written { .. }),
                        "the holder's write was refused: {outcome:?}"
                    );
                    println!(
                        "worker {worker}: lock held with token {}, wrote {value:?}",
                        token.0
                    );
                    guard.unlock()?;
                }
                session.close()?;
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    let tokens = granted.lock().clone();
    anyhow::ensure!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens did not strictly increase: {tokens:?}"
    );
    // A holder that was paused past its lease wakes up believing it still holds the lock,
    // and writes with its old token: the fence refuses it.
    let stale = tokens[0];
    match fenced_put(client, RESOURCE, b"late write", stale)? {
        FencedPut::Refused { highest_token } => {
            println!(
                "a write with the stale token {} was refused (highest {})",
                stale.0, highest_token.0
            )
        }
        written => anyhow::bail!("a stale token was accepted: {written:?}"),
    }
    Ok(tokens)
}

fn main() -> anyhow::Result<()> {
    let cluster = support::ExampleCluster::start()?;
    run(&cluster.client()?)?;
    Ok(())
}
