//! The recipe examples run, not just built: each example's `run` function (what its `main`
//! calls) is included here as a module and run against a three-node cluster in this
//! process, started by the examples' own `support` module. An example that fails its own
//! checks (an exact count, increasing tokens, a refused stale write, a reload that misses an
//! update, a session that outlives its TTL) fails its test.
//! Method: the examples' `ExampleCluster::in_process`; every wait has a deadline.
// Each example is a crate of its own and so includes `examples/support` itself; included
// here as modules, they bring one copy each (identical, unused but for the cluster type).
#![allow(clippy::duplicate_mod)]

#[path = "../examples/support/mod.rs"]
mod support;

#[path = "../examples/counter.rs"]
#[allow(dead_code)]
mod counter;

#[path = "../examples/lock.rs"]
#[allow(dead_code)]
mod lock;

#[path = "../examples/config_service.rs"]
#[allow(dead_code)]
mod config_service;

#[path = "../examples/session_store.rs"]
#[allow(dead_code)]
mod session_store;

use std::time::Duration;

use support::ExampleCluster;

fn cluster() -> ExampleCluster {
    ExampleCluster::in_process(3).expect("cluster")
}

#[test]
fn counter_counts_exactly() {
    let cluster = cluster();
    let client = cluster.client().expect("client");
    assert_eq!(counter::run(&client).expect("counter"), 200);
}

#[test]
fn lock_tokens_increase_and_a_stale_one_is_refused() {
    let cluster = cluster();
    let client = cluster.client().expect("client");
    assert_eq!(lock::run(&client).expect("lock").len(), 8);
}

#[test]
fn config_service_misses_no_update() {
    let cluster = cluster();
    let client = cluster.client().expect("client");
    let settings = config_service::run(&client).expect("config service");
    assert_eq!(settings.len(), 3);
}

#[test]
fn session_store_expires_idle_sessions_only() {
    let cluster = cluster();
    let client = cluster.client().expect("client");
    let lived = session_store::run(&client).expect("session store");
    assert!(lived >= Duration::from_secs(2));
}
