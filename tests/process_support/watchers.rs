//! Watchers beside a recorded history, checked the way etcd's robustness suite checks watch:
//! each watcher watches every recorded key from revision 1 through the faults (its `Client`
//! resumes on another node whenever its node dies, freezes or is cut off), and afterwards
//!
//! - every watcher's events are in revision order, without duplicates;
//! - all watchers saw exactly the same events (a gap in one would show against the others);
//! - the events match the committed writes: every acknowledged put and successful
//!   compare-and-swap is there with its value, nothing appears that no client wrote or that
//!   a failed compare-and-swap wrote, and each key's last event is its final value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keyval::client::{Client, ClientOptions, WatchOptions};
use keyval::kv::{Event, EventKind};
use keyval::testkit::linearizability::{Operation, Outcome, Request, Response};
use keyval::LogIndex;

/// The key written last, after the faults: every watcher must reach it.
pub const END_KEY: &[u8] = b"k-watch-end";

/// Watchers running in threads.
pub struct Watchers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<Vec<Event>, String>>>,
}

/// Starts `count` watchers of every key starting with `k`, from revision 1.
pub fn start(endpoints: &[String], count: usize) -> Watchers {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..count)
        .map(|_| {
            let endpoints = endpoints.to_vec();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || watch_until_end(&endpoints, &stop))
        })
        .collect();
    Watchers { stop, threads }
}

fn watch_until_end(endpoints: &[String], stop: &AtomicBool) -> Result<Vec<Event>, String> {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let client = Client::new(endpoints, options).map_err(|error| error.to_string())?;
    let opened = Instant::now() + Duration::from_secs(60);
    let mut watch = loop {
        match client.watch(
            WatchOptions::prefix(b"k")
                .start(LogIndex(1))
                .silence_timeout(Duration::from_secs(2)),
        ) {
            Ok(watch) => break watch,
            Err(error) if Instant::now() < opened => {
                eprintln!("watcher: opening: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => return Err(format!("opening the watch: {error}")),
        }
    };
    let mut events = Vec::new();
    // After the stop flag, at most this long for the end marker.
    let mut end_by = None;
    loop {
        if stop.load(Ordering::SeqCst) && end_by.is_none() {
            end_by = Some(Instant::now() + Duration::from_secs(60));
        }
        if end_by.is_some_and(|end| Instant::now() > end) {
            return Err(format!(
                "the end marker never arrived (at revision {}, {} events)",
                watch.revision(),
                events.len()
            ));
        }
        match watch.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(response)) => {
                let ended = response.events.iter().any(|event| event.key == END_KEY);
                events.extend(response.events);
                if ended {
                    return Ok(events);
                }
            }
            Ok(None) => {}
            Err(error) => return Err(format!("watch failed at {}: {error}", watch.revision())),
        }
    }
}

impl Watchers {
    /// Writes the end marker with `client` and collects every watcher's events.
    pub fn finish(self, client: &Client) -> Vec<Vec<Event>> {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.put(END_KEY.to_vec(), b"end".to_vec()) {
                Ok(_) => break,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("writing the watch end marker: {error}");
                }
                Err(error) => panic!("cannot write the watch end marker: {error}"),
            }
        }
        self.threads
            .into_iter()
            .map(|thread| match thread.join() {
                Ok(Ok(events)) => events,
                Ok(Err(reason)) => panic!("a watcher failed: {reason}"),
                Err(_) => panic!("a watcher panicked"),
            })
            .collect()
    }
}

/// One event as the checks compare it.
type Seen = (LogIndex, EventKind, Vec<u8>, Vec<u8>);

/// Checks the watchers' events against the recorded `operations` and each key's `finals`
/// (its value read after the faults; `None`: absent). `context` goes into failures.
pub fn check(
    watchers: &[Vec<Event>],
    operations: &[Operation],
    finals: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    context: &str,
) {
    let sequences: Vec<Vec<Seen>> = watchers
        .iter()
        .map(|events| {
            events
                .iter()
                .filter(|event| event.key != END_KEY)
                .map(|event| {
                    (
                        event.revision,
                        event.kind,
                        event.key.clone(),
                        event.value.clone(),
                    )
                })
                .collect()
        })
        .collect();
    for (k, sequence) in sequences.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for pair in sequence.windows(2) {
            assert!(
                pair[0].0 <= pair[1].0,
                "watcher {k}: revisions out of order: {:?} then {:?} ({context})",
                pair[0],
                pair[1]
            );
        }
        for event in sequence {
            assert!(
                seen.insert((event.0, event.2.clone())),
                "watcher {k}: {event:?} delivered twice ({context})"
            );
        }
        assert_eq!(
            sequence, &sequences[0],
            "watcher {k} saw other events than watcher 0 ({context})"
        );
    }
    let events = &sequences[0];
    // Values written by puts and compare-and-swaps, by whether they are known to be applied.
    let mut applied = BTreeSet::new();
    let mut maybe = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for operation in operations {
        let (key, value, outcome) = match &operation.request {
            Request::Put { key, value } => (key, value, &operation.outcome),
            Request::CompareAndSwap { key, new, .. } => (key, new, &operation.outcome),
            _ => continue,
        };
        let entry = (key.clone(), value.clone());
        match outcome {
            Outcome::Ok(Response::CompareAndSwap(false)) => {
                refused.insert(entry);
            }
            Outcome::Ok(_) => {
                applied.insert(entry);
            }
            Outcome::Unknown => {
                maybe.insert(entry);
            }
        }
    }
    let puts: BTreeSet<(Vec<u8>, Vec<u8>)> = events
        .iter()
        .filter(|event| event.1 == EventKind::Put)
        .map(|event| (event.2.clone(), event.3.clone()))
        .collect();
    for entry in &applied {
        assert!(
            puts.contains(entry),
            "acknowledged write {entry:?} missing from the watch ({context})"
        );
    }
    for entry in &puts {
        assert!(
            applied.contains(entry) || maybe.contains(entry),
            "the watch shows a write no client made: {entry:?} ({context})"
        );
        assert!(
            !refused.contains(entry),
            "the watch shows a refused compare-and-swap: {entry:?} ({context})"
        );
    }
    let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for (_, kind, key, value) in events {
        let value = (*kind == EventKind::Put).then(|| value.clone());
        last.insert(key.clone(), value);
    }
    for (key, value) in finals {
        assert_eq!(
            last.get(key).cloned().flatten(),
            value.clone(),
            "key {:?}: the last watch event is not its final value ({context})",
            String::from_utf8_lossy(key)
        );
    }
}
