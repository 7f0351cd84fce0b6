//! A configuration reader that loads every key under `examples/config/` and reloads on each
//! change through a watch. The load is a read-only transaction, which says the exact revision
//! it read at; the watch starts right after it, so an update that lands between the read and
//! the watch is not missed (this example makes one land there on purpose).
//!
//! Run: `cargo run --example config_service` (three nodes in this process), or against a
//! running cluster: `KEYVAL_ENDPOINTS=127.0.0.1:7379 cargo run --example config_service`.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keyval::client::{Client, Watch, WatchOptions};
use keyval::kv::{EventKind, KeyRange, Txn, TxnOp, TxnOpResponse, SCAN_LIMIT_MAX};

const PREFIX: &[u8] = b"examples/config/";

/// How long the reader waits for the writer's last update.
const RELOAD_WAIT: Duration = Duration::from_secs(20);

/// A configuration kept current by a watch.
struct ConfigReader {
    settings: BTreeMap<String, String>,
    watch: Watch,
}

impl ConfigReader {
    /// Loads the prefix at one revision and watches from the next.
    fn load(client: &Client) -> anyhow::Result<ConfigReader> {
        let read = client
            .txn(Txn::new().then([TxnOp::range(KeyRange::prefix(PREFIX), SCAN_LIMIT_MAX)]))?;
        let Some(TxnOpResponse::Range(page)) = read.responses.first() else {
            anyhow::bail!("unexpected answer {read:?}");
        };
        anyhow::ensure!(!page.more, "more settings than one read returns");
        let settings = page
            .entries
            .iter()
            .map(|(key, versioned)| (name(key), text(&versioned.value)))
            .collect();
        println!("loaded at revision {}: {settings:?}", read.revision.0);
        // Simulate a writer racing the reader: this update lands after the read and before
        // the watch exists; starting the watch at the read's revision + 1 still delivers it.
        client.put(key("feature.search"), b"on".to_vec())?;
        let watch = client.watch(WatchOptions::prefix(PREFIX).start(read.revision.next()))?;
        Ok(ConfigReader { settings, watch })
    }

    /// Applies the next batch of changes (one revision or more), if any arrives in `timeout`.
    fn reload(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let Some(response) = self.watch.recv_timeout(timeout)? else {
            return Ok(false);
        };
        for event in &response.events {
            match event.kind {
                EventKind::Put => {
                    self.settings.insert(name(&event.key), text(&event.value));
                }
                EventKind::Delete => {
                    self.settings.remove(&name(&event.key));
                }
            }
        }
        println!(
            "reloaded at revision {}: {:?}",
            response.revision.0, self.settings
        );
        Ok(!response.events.is_empty())
    }
}

fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

fn name(key: &[u8]) -> String {
    text(&key[PREFIX.len()..])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the example against `client`; returns the final configuration.
pub fn run(client: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    client.delete_prefix(PREFIX)?;
    client.put(key("log.level"), b"info".to_vec())?;
    client.put(key("pool.size"), b"8".to_vec())?;
    let mut reader = ConfigReader::load(client)?;
    let writer = {
        let client = client.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            client.put(key("log.level"), b"debug".to_vec())?;
            client.delete(key("pool.size"))?;
            client.put(key("generation"), b"2".to_vec())?;
            Ok(())
        })
    };
    let expected: BTreeMap<String, String> = [
        ("feature.search", "on"),
        ("generation", "2"),
        ("log.level", "debug"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    let deadline = Instant::now() + RELOAD_WAIT;
    while reader.settings != expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reader never caught up: {:?}",
            reader.settings
        );
        reader.reload(Duration::from_millis(500))?;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    println!("final configuration: {:?}", reader.settings);
    Ok(reader.settings)
}

fn main() -> anyhow::Result<()> {
    let cluster = support::ExampleCluster::start()?;
    run(&cluster.client()?)?;
    Ok(())
}
