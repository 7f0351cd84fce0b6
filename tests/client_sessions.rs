//! The `Client`'s session rules against a scripted fake server (PITFALLS #14, #22): the
//! client registers a session before its first write and keeps it for the next ones; a retry
//! resends the same (client_id, sequence); `SessionExpired` on a first attempt restarts the
//! write under a newly registered session at sequence 1; `SessionExpired` after an attempt
//! whose outcome was lost ends `Indeterminate`, is never re-sent, and the next write
//! registers a fresh session; a server that stays busy yields a definite `Unavailable`, one
//! that keeps answering `Indeterminate` yields `Indeterminate`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyval::client::{Client, ClientError, ClientOptions};
use keyval::kv::{Command, KvError, Metadata, Response, SessionId, WriteOutcome};
use keyval::protocol::{
    write_frame, FrameReader, RequestBody, RequestFrame, ResponseBody, ResponseFrame, ServerError,
};
use keyval::LogIndex;

/// What the fake server does with the n-th write it receives.
enum Answer {
    /// Close the connection without answering (the request was "served", the answer lost).
    Drop,
    /// Answer with this.
    Reply(Result<ResponseBody, ServerError>),
}

/// The client id the fake server gives its first registered session; later ones count up.
const FIRST_CLIENT_ID: u64 = 100;

/// What the fake server saw: the writes (registrations apart) and how many sessions it
/// registered.
#[derive(Default)]
struct Seen {
    writes: Mutex<Vec<Command>>,
    registrations: AtomicU64,
}

/// Starts a fake server that registers every session asked for, answers writes by
/// `script(n, &command)` and records them.
fn fake_server(
    script: impl Fn(usize, &Command) -> Answer + Send + Sync + 'static,
) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Seen::default());
    let recorded = Arc::clone(&seen);
    let script = Arc::new(script);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
            std::thread::spawn(move || serve(stream, &seen, &*script));
        }
    });
    (address, recorded)
}

fn reply(stream: &mut TcpStream, request_id: u64, result: Result<ResponseBody, ServerError>) {
    let mut bytes = Vec::new();
    write_frame(&ResponseFrame { request_id, result }, &mut bytes).unwrap();
    let _ = stream.write_all(&bytes);
}

fn serve(mut stream: TcpStream, seen: &Seen, script: &dyn Fn(usize, &Command) -> Answer) {
    let mut frames = FrameReader::new();
    while let Ok(frame) = frames.read_frame::<RequestFrame>(&mut stream) {
        let RequestBody::Write(command) = frame.body else {
            // Not a write (the status request `Client::connect` sends): alive, but no help.
            let busy = ServerError::Busy {
                reason: "a fake server".into(),
            };
            reply(&mut stream, frame.request_id, Err(busy));
            continue;
        };
        if command.is_registration() {
            let client_id = FIRST_CLIENT_ID + seen.registrations.fetch_add(1, Ordering::SeqCst);
            let registered = Response::SessionRegistered { client_id };
            reply(
                &mut stream,
                frame.request_id,
                Ok(ResponseBody::Written(registered)),
            );
            continue;
        }
        let n = {
            let mut writes = seen.writes.lock().unwrap();
            writes.push(command.clone());
            writes.len()
        };
        match script(n, &command) {
            Answer::Drop => return,
            Answer::Reply(result) => reply(&mut stream, frame.request_id, result),
        }
    }
}

fn written() -> Result<ResponseBody, ServerError> {
    let metadata = Metadata::created(LogIndex(7));
    Ok(ResponseBody::Written(Response::Written {
        revision: LogIndex(7),
        outcomes: vec![WriteOutcome {
            previous: None,
            current: Some(metadata),
            previous_value: None,
            deleted: 0,
        }],
    }))
}

fn expired(session: SessionId) -> Result<ResponseBody, ServerError> {
    Ok(ResponseBody::Written(Response::Rejected(
        KvError::SessionExpired {
            client_id: session.client_id,
            sequence: session.sequence,
        },
    )))
}

fn options(timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(timeout_ms),
        ..ClientOptions::default()
    }
}

/// The sessions of the writes `seen` so far, in order.
fn sessions(seen: &Seen) -> Vec<SessionId> {
    let writes = seen.writes.lock().unwrap();
    writes
        .iter()
        .map(|command| command.session_id().expect("every write has a session"))
        .collect()
}

#[test]
fn a_session_is_registered_before_the_first_write_and_kept() {
    let (address, seen) = fake_server(|_, _| Answer::Reply(written()));
    let client = Client::connect(&[address], options(3000)).unwrap();
    assert_eq!(
        seen.registrations.load(Ordering::SeqCst),
        0,
        "registered lazily"
    );
    client.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    client.put(b"b".to_vec(), b"2".to_vec()).unwrap();
    assert_eq!(seen.registrations.load(Ordering::SeqCst), 1);
    let sessions = sessions(&seen);
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions[0].client_id, FIRST_CLIENT_ID,
        "the id the cluster gave"
    );
    assert_eq!(sessions[1].client_id, FIRST_CLIENT_ID);
    assert_eq!(
        (sessions[0].sequence, sessions[1].sequence),
        (1, 2),
        "sequences from 1"
    );
}

#[test]
fn session_expired_on_a_first_attempt_restarts_under_a_new_session() {
    let (address, seen) = fake_server(|n, command| match n {
        1 => Answer::Reply(expired(command.session_id().unwrap())),
        _ => Answer::Reply(written()),
    });
    let client = Client::connect(&[address], options(3000)).unwrap();
    client.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    let sessions = sessions(&seen);
    assert_eq!(sessions.len(), 2);
    let (first, second) = (sessions[0], sessions[1]);
    assert_eq!(first.sequence, 1);
    assert_ne!(first.client_id, second.client_id);
    assert_eq!(seen.registrations.load(Ordering::SeqCst), 2);
    assert_eq!(second.sequence, 1, "a new session starts at sequence 1");
}

#[test]
fn session_expired_after_a_lost_answer_is_indeterminate_and_not_resent() {
    let (address, seen) = fake_server(|n, command| match n {
        1 => Answer::Drop,
        2 => Answer::Reply(expired(command.session_id().unwrap())),
        _ => Answer::Reply(written()),
    });
    let client = Client::connect(&[address], options(3000)).unwrap();
    let error = client.put(b"k".to_vec(), b"v".to_vec()).unwrap_err();
    assert!(
        matches!(error, ClientError::Indeterminate { .. }),
        "{error:?}"
    );
    let before = sessions(&seen);
    assert_eq!(
        before.len(),
        2,
        "the ambiguous write must not be re-sent under a new session"
    );
    assert_eq!(before[0], before[1], "a retry reuses the session");
    // The expired session is dropped: the next write registers another.
    client.put(b"k2".to_vec(), b"v".to_vec()).unwrap();
    let after = sessions(&seen);
    assert_eq!(seen.registrations.load(Ordering::SeqCst), 2);
    assert_ne!(after[2].client_id, before[0].client_id);
    assert_eq!(after[2].sequence, 1);
}

#[test]
fn sequences_grow_per_write_and_retries_reuse_them() {
    let (address, seen) = fake_server(|n, _| match n {
        2 => Answer::Drop,
        _ => Answer::Reply(written()),
    });
    let client = Client::connect(&[address], options(3000)).unwrap();
    client.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    client.put(b"b".to_vec(), b"2".to_vec()).unwrap();
    let sessions = sessions(&seen);
    assert_eq!(sessions.len(), 3);
    assert_eq!(sessions[0].sequence, 1);
    assert_eq!(sessions[1].sequence, 2);
    assert_eq!(
        sessions[1], sessions[2],
        "the retry after the lost answer is the same write"
    );
}

#[test]
fn busy_until_the_deadline_is_unavailable_and_indeterminate_stays_indeterminate() {
    let (address, _) = fake_server(|_, _| {
        Answer::Reply(Err(ServerError::Busy {
            reason: "test".into(),
        }))
    });
    let client = Client::connect(&[address], options(300)).unwrap();
    let error = client.put(b"k".to_vec(), b"v".to_vec()).unwrap_err();
    assert!(
        matches!(error, ClientError::Unavailable { .. }),
        "{error:?}"
    );

    let (address, _) = fake_server(|_, _| {
        Answer::Reply(Err(ServerError::Indeterminate {
            reason: "test".into(),
        }))
    });
    let client = Client::connect(&[address], options(300)).unwrap();
    let error = client.put(b"k".to_vec(), b"v".to_vec()).unwrap_err();
    assert!(error.is_indeterminate(), "{error:?}");
}
