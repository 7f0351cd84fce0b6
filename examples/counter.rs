//! A counter that many threads increment at once, each increment a compare-and-swap
//! transaction on the key's mod revision: "if nobody wrote since I read, write my value + 1,
//! else tell me the current one" — one round trip per attempt, a retry only when another
//! thread won. The final count is exact: no increment is lost or applied twice.
//!
//! Run: `cargo run --example counter` (three nodes in this process), or against a running
//! cluster: `KEYVAL_ENDPOINTS=127.0.0.1:7379 cargo run --example counter`.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keyval::client::Client;
use keyval::kv::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, Versioned};

/// The counter's key.
const KEY: &[u8] = b"examples/counter";
/// Threads incrementing at once.
const THREADS: u64 = 8;
/// Increments per thread.
const INCREMENTS: u64 = 25;

fn parse(current: Option<&Versioned>) -> anyhow::Result<(u64, u64)> {
    match current {
        None => Ok((0, 0)),
        Some(versioned) => Ok((
            std::str::from_utf8(&versioned.value)?.parse()?,
            versioned.metadata.mod_revision.0,
        )),
    }
}

/// Adds one; returns how many attempts lost to another thread first.
fn increment(client: &Client) -> anyhow::Result<u64> {
    let (mut value, mut revision) = parse(client.get(KEY.to_vec())?.as_ref())?;
    let mut lost = 0;
    loop {
        // An absent key has mod revision 0, so the first increment needs no special case.
        let answer = client.txn(
            Txn::new()
                .when([Compare::mod_revision(KEY, CompareOp::Equal, revision)])
                .then([TxnOp::put(KEY, (value + 1).to_string())])
                .otherwise([TxnOp::get(KEY)]),
        )?;
        if answer.succeeded {
            return Ok(lost);
        }
        lost += 1;
        let current = match answer.responses.first() {
            Some(TxnOpResponse::Get(current)) => current.as_ref(),
            other => anyhow::bail!("unexpected answer {other:?}"),
        };
        (value, revision) = parse(current)?;
    }
}

/// Runs the example against `client`; returns the final count.
pub fn run(client: &Client) -> anyhow::Result<u64> {
    let (start, _) = parse(client.get(KEY.to_vec())?.as_ref())?;
    let conflicts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let client = client.clone();
            let conflicts = Arc::clone(&conflicts);
            std::thread::spawn(move || -> anyhow::Result<()> {
                for _ in 0..INCREMENTS {
                    conflicts.fetch_add(increment(&client)?, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
    }
    let (end, _) = parse(client.get(KEY.to_vec())?.as_ref())?;
    println!(
        "{THREADS} threads x {INCREMENTS} increments: {start} -> {end} ({} attempts lost a race and retried)",
        conflicts.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        end == start + THREADS * INCREMENTS,
        "lost or doubled increments: {start} + {} != {end}",
        THREADS * INCREMENTS
    );
    Ok(end)
}

fn main() -> anyhow::Result<()> {
    let cluster = support::ExampleCluster::start()?;
    run(&cluster.client()?)?;
    Ok(())
}
