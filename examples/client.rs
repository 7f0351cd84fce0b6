//! Using the blocking `Client` against a running cluster.
//!
//! Start a node first (`cargo run --release --bin keyval`), then:
//! `cargo run --example client -- 127.0.0.1:7379`

use keyval::client::{CasOutcome, Client, ClientError, ClientOptions};
use keyval::kv::{Expect, KeyRange};
use keyval::protocol::Consistency;

fn main() -> Result<(), ClientError> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:7379".to_string()]
    } else {
        endpoints
    };
    let client = Client::connect(&endpoints, ClientOptions::default())?;

    let metadata = client.put(b"color".to_vec(), b"blue".to_vec())?;
    println!("put color=blue at revision {}", metadata.mod_revision.0);

    let value = client.get(b"color".to_vec())?;
    println!("get color -> {:?}", value.map(|versioned| versioned.value));

    match client.cas(
        b"color".to_vec(),
        Expect::Value(b"blue".to_vec()),
        Some(b"green".to_vec()),
    )? {
        CasOutcome::Swapped { .. } => println!("cas blue -> green: swapped"),
        CasOutcome::Failed { current } => println!("cas failed; current {current:?}"),
    }

    let stale = client.get_with(b"color".to_vec(), Consistency::Stale)?;
    println!(
        "stale read from {}: applied {}, {} entries behind",
        stale.node, stale.applied.0, stale.behind
    );

    let page = client.scan(KeyRange::prefix(b"co"), 10)?;
    println!("scan co*: {} keys", page.entries.len());

    // A write whose outcome is unknown is never reported as success or failure.
    match client.delete(b"color".to_vec()) {
        Ok(existed) => println!("deleted (existed: {existed})"),
        Err(error) if error.is_indeterminate() => println!("delete may or may not have applied"),
        Err(error) => return Err(error),
    }
    Ok(())
}
