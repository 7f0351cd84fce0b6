//! `kvctl watch`: print every change to a key, a prefix or a range as it is committed, like
//! `etcdctl watch`, resuming by itself across node failures (the client's watch does).

use clap::Args;
use serde_json::json;

use crate::client::{Client, ClientError, WatchOptions};
use crate::kv::{Event, EventKind, KeyRange};
use crate::types::LogIndex;

use super::kvctl::{fail, metadata_json, text, EXIT_ERROR, EXIT_OK};

/// `kvctl watch` arguments.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The key (with --prefix: the prefix; with END: the first key of the range).
    pub key: String,
    /// The end of a range: keys from KEY (inclusive) to END (exclusive).
    #[arg(conflicts_with = "prefix")]
    pub end: Option<String>,
    /// Every key that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start at this revision (replaying the history from there) instead of now.
    #[arg(long)]
    pub rev: Option<u64>,
    /// Print each event's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
    /// Print a progress line when nothing happened for this many seconds.
    #[arg(long)]
    pub progress_notify: Option<u64>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<usize>,
}

/// Watches until interrupted (or `--count` events); exit 1 if the watch cannot go on (its
/// start was compacted).
pub fn run(client: &Client, args: &WatchArgs, json: bool) -> i32 {
    let range = match &args.end {
        Some(end) => KeyRange::between(args.key.as_bytes().to_vec(), end.as_bytes().to_vec()),
        None if args.prefix => KeyRange::prefix(args.key.as_bytes()),
        None => KeyRange::single(args.key.as_bytes()),
    };
    let mut options = WatchOptions::range(range);
    if let Some(rev) = args.rev {
        options = options.start(LogIndex(rev));
    }
    if args.prev_kv {
        options = options.with_previous();
    }
    if let Some(seconds) = args.progress_notify {
        options = options.progress_interval(std::time::Duration::from_secs(seconds.max(1)));
    }
    let mut watch = match client.watch(options) {
        Ok(watch) => watch,
        Err(error) => return fail(&error, json),
    };
    let mut printed = 0;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            return EXIT_OK;
        }
        let response = match watch.recv() {
            Ok(response) => response,
            Err(error @ ClientError::Compacted { .. }) => {
                fail(&error, json);
                return EXIT_ERROR;
            }
            Err(error) => return fail(&error, json),
        };
        if response.is_progress() {
            if json {
                println!("{}", json!({ "progress": response.revision.0 }));
            } else {
                println!("PROGRESS {}", response.revision.0);
            }
            continue;
        }
        for event in &response.events {
            print_event(event, args.prev_kv, json);
            printed += 1;
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
        }
    }
}

/// etcdctl's layout: the kind, the key, the value (a put's), then with --prev-kv the
/// previous value; or one JSON object per event.
fn print_event(event: &Event, prev_kv: bool, json: bool) {
    let kind = match event.kind {
        EventKind::Put => "PUT",
        EventKind::Delete => "DELETE",
    };
    if json {
        println!(
            "{}",
            json!({
                "type": kind,
                "revision": event.revision.0,
                "key": text(&event.key),
                "value": text(&event.value),
                "metadata": event.metadata.as_ref().map(metadata_json),
                "previous": event.previous.as_ref().map(|previous| json!({
                    "value": text(&previous.value),
                    "metadata": metadata_json(&previous.metadata),
                })),
            })
        );
        return;
    }
    println!("{kind}");
    println!("{}", text(&event.key));
    if event.kind == EventKind::Put {
        println!("{}", text(&event.value));
    }
    if prev_kv {
        if let Some(previous) = &event.previous {
            println!("{}", text(&previous.value));
        }
    }
}
