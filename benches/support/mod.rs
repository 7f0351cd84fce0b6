//! What the process-level benchmarks share: settings from the environment, free ports, and
//! child processes that die with the benchmark.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::Child;

/// The environment variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A port on 127.0.0.1 free now (bound, then released for a child to take).
pub fn free_port() -> u16 {
    // Random and below Linux's ephemeral range (32768 and up): a port-0 port, released, can be
    // taken by any outgoing connection before the child binds it.
    loop {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Child processes killed and reaped when dropped, however the benchmark ends.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
