//! `kvctl lock NAME [-- COMMAND...]` and `kvctl elect NAME [PROPOSAL]`: the
//! [recipes](crate::recipes) from the shell, as etcdctl's `lock` and `elect`.
//!
//! Both hold a session (a lease kept alive, `--ttl` seconds) for as long as they run, and
//! end cleanly on SIGINT (Ctrl-C) or SIGTERM: the lock is released, the leadership resigned,
//! the lease revoked. A kvctl that is killed or frozen loses them after the TTL instead.

use std::process::{Command as Process, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use serde_json::json;

use crate::client::Client;
use crate::recipes::{
    fenced_put as put_fenced, Election, FencedPut, Guard, Leader, Mutex, Observer, RecipeError,
    Session,
};
use crate::types::LogIndex;

use super::kvctl::{fail, text, EXIT_CAS_FAILED, EXIT_ERROR, EXIT_OK};
use super::lease::format_lease_id;

/// The default session TTL of `lock` and `elect`, in seconds (etcdctl's).
const CLI_SESSION_TTL_SECONDS_DEFAULT: u64 = 10;

/// How often kvctl looks at its interrupt flag, its lock and its command while it waits.
const CHECK_PERIOD: Duration = Duration::from_millis(50);

/// How long a command may take to exit after kvctl was interrupted before it is killed.
const COMMAND_GRACE: Duration = Duration::from_secs(2);

/// `kvctl lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (its keys are `NAME/<lease-id-hex>`).
    pub name: String,
    /// The session's lease TTL in seconds: how long a killed or frozen kvctl keeps others
    /// waiting (raised to the cluster's minimum).
    #[arg(long, default_value_t = CLI_SESSION_TTL_SECONDS_DEFAULT)]
    pub ttl: u64,
    /// A command to run while holding the lock, after `--`; it gets KEYVAL_LOCK_KEY and
    /// KEYVAL_FENCING_TOKEN in its environment, and kvctl exits with its exit code.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `kvctl elect`.
#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (its keys are `NAME/<lease-id-hex>`).
    pub name: String,
    /// Campaign with this value; without it, observe the leaders.
    pub proposal: Option<String>,
    /// Observe: print each leader as it changes (the default without a proposal).
    #[arg(short, long, conflicts_with = "proposal")]
    pub listen: bool,
    /// The session's lease TTL in seconds (raised to the cluster's minimum).
    #[arg(long, default_value_t = CLI_SESSION_TTL_SECONDS_DEFAULT)]
    pub ttl: u64,
}

/// SIGINT and SIGTERM as a flag (so kvctl can release what it holds before exiting).
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(error) = signal_hook::flag::register(signal, Arc::clone(&flag)) {
            eprintln!("kvctl: cannot handle signal {signal}: {error}");
        }
    }
    flag
}

/// Prints a recipe error; returns its exit code.
fn fail_recipe(error: &RecipeError, json: bool) -> i32 {
    match error {
        RecipeError::Client(error) => fail(error, json),
        other => {
            if json {
                println!("{}", json!({ "error": other.to_string() }));
            } else {
                eprintln!("kvctl: {other}");
            }
            EXIT_ERROR
        }
    }
}

/// Waits for `rx` while watching the interrupt flag: `None` if interrupted first.
fn wait_interruptible<T>(rx: &Receiver<T>, interrupted: &AtomicBool) -> Option<T> {
    loop {
        match rx.recv_timeout(CHECK_PERIOD) {
            Ok(value) => return Some(value),
            Err(RecvTimeoutError::Timeout) if !interrupted.load(Ordering::Acquire) => {}
            Err(_) => return None,
        }
    }
}

/// Runs `kvctl put KEY VALUE --fencing-token N` through the storage-side fence; exit 4 if a
/// higher token was seen.
pub fn fenced_put(client: &Client, key: &[u8], value: &[u8], token: LogIndex, json: bool) -> i32 {
    match put_fenced(client, key, value, token) {
        Ok(FencedPut::Written { revision }) => {
            if json {
                println!("{}", json!({ "ok": true, "revision": revision.0 }));
            } else {
                println!("OK (revision {})", revision.0);
            }
            EXIT_OK
        }
        Ok(FencedPut::Refused { highest_token }) => {
            if json {
                println!(
                    "{}",
                    json!({ "ok": false, "refused": true, "highest_token": highest_token.0 })
                );
            } else {
                eprintln!(
                    "kvctl: refused: {} has seen fencing token {} (this one is {})",
                    text(key),
                    highest_token.0,
                    token.0
                );
            }
            EXIT_CAS_FAILED
        }
        Err(error) => fail_recipe(&error, json),
    }
}

/// Runs `kvctl lock`; returns the exit code.
pub fn lock(client: &Client, args: &LockArgs, json: bool) -> i32 {
    let interrupted = interrupt_flag();
    let session = match Session::with_ttl(client, args.ttl) {
        Ok(session) => session,
        Err(error) => return fail_recipe(&error, json),
    };
    let (tx, rx) = bounded(1);
    let mutex = Mutex::new(&session, &args.name);
    let waiter = std::thread::Builder::new()
        .name("kvctl-lock".into())
        .spawn(move || {
            let _ = tx.send(mutex.lock());
        });
    if let Err(error) = waiter {
        let _ = session.close();
        eprintln!("kvctl: spawning the lock thread: {error}");
        return EXIT_ERROR;
    }
    let guard = match wait_interruptible(&rx, &interrupted) {
        Some(Ok(guard)) => guard,
        Some(Err(error)) => {
            let _ = session.close();
            return fail_recipe(&error, json);
        }
        None => {
            // Revoking the lease takes this session out of the line.
            let _ = session.close();
            eprintln!("kvctl: interrupted before the lock was acquired");
            return EXIT_ERROR;
        }
    };
    let acquired = if json {
        json!({
            "key": text(guard.key()),
            "fencing_token": guard.fencing_token().0,
            "lease": format_lease_id(session.lease()),
        })
        .to_string()
    } else {
        format!(
            "{}\nfencing token {}",
            text(guard.key()),
            guard.fencing_token().0
        )
    };
    let code = if args.command.is_empty() {
        println!("{acquired}");
        hold(&guard, &interrupted)
    } else {
        // The command's output stays its own: kvctl speaks on stderr.
        eprintln!("{acquired}");
        run_command(&guard, &args.command, &interrupted)
    };
    match guard.unlock() {
        Ok(()) => {}
        Err(RecipeError::Lost { .. }) => {
            eprintln!("kvctl: the lock had been lost (the session's lease expired) before release");
        }
        Err(error) => eprintln!("kvctl: releasing the lock: {error}"),
    }
    let _ = session.close();
    code
}

/// Holds the lock until interrupted (exit 0) or lost (exit 1).
fn hold(guard: &Guard, interrupted: &AtomicBool) -> i32 {
    while !interrupted.load(Ordering::Acquire) {
        if !guard.is_valid() {
            eprintln!("kvctl: lock lost: the session's lease expired or was revoked");
            return EXIT_ERROR;
        }
        std::thread::sleep(CHECK_PERIOD);
    }
    EXIT_OK
}

/// Runs `command` with the lock's key and fencing token in its environment; returns its exit
/// code. Losing the lock meanwhile is reported, not acted on: the command's fenced writes
/// are what keeps a late holder harmless.
fn run_command(guard: &Guard, command: &[String], interrupted: &AtomicBool) -> i32 {
    let mut child = match Process::new(&command[0])
        .args(&command[1..])
        .env("KEYVAL_LOCK_KEY", text(guard.key()))
        .env("KEYVAL_FENCING_TOKEN", guard.fencing_token().0.to_string())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            eprintln!("kvctl: cannot run {:?}: {error}", command[0]);
            return EXIT_ERROR;
        }
    };
    let mut lost_reported = false;
    let mut interrupted_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_code(status),
            Ok(None) => {}
            Err(error) => {
                eprintln!("kvctl: waiting for the command: {error}");
                return EXIT_ERROR;
            }
        }
        if !lost_reported && !guard.is_valid() {
            eprintln!("kvctl: lock lost: the session's lease expired or was revoked");
            lost_reported = true;
        }
        if interrupted.load(Ordering::Acquire) {
            // Ctrl-C reached the command too (same process group); give it time to exit.
            let since = *interrupted_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= COMMAND_GRACE {
                let _ = child.kill();
            }
        }
        std::thread::sleep(CHECK_PERIOD);
    }
}

/// A child's exit code, as a shell reports it (128 + the signal that killed it).
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(EXIT_ERROR)
}

fn leader_line(leader: &Leader, json: bool) -> String {
    if json {
        json!({
            "key": text(&leader.key),
            "value": text(&leader.value),
            "revision": leader.revision.0,
            "mod_revision": leader.mod_revision.0,
        })
        .to_string()
    } else {
        format!("{}\n{}", text(&leader.key), text(&leader.value))
    }
}

/// Runs `kvctl elect`; returns the exit code.
pub fn elect(client: &Client, args: &ElectArgs, json: bool) -> i32 {
    let interrupted = interrupt_flag();
    match &args.proposal {
        Some(proposal) => campaign(client, args, proposal, &interrupted, json),
        None => observe(client, &args.name, &interrupted, json),
    }
}

fn campaign(
    client: &Client,
    args: &ElectArgs,
    proposal: &str,
    interrupted: &AtomicBool,
    json: bool,
) -> i32 {
    let session = match Session::with_ttl(client, args.ttl) {
        Ok(session) => session,
        Err(error) => return fail_recipe(&error, json),
    };
    let (tx, rx) = bounded(1);
    let mut election = Election::new(&session, &args.name);
    let value = proposal.as_bytes().to_vec();
    let candidate = std::thread::Builder::new()
        .name("kvctl-campaign".into())
        .spawn(move || {
            let result = election.campaign(&value);
            let _ = tx.send((election, result));
        });
    if let Err(error) = candidate {
        let _ = session.close();
        eprintln!("kvctl: spawning the campaign thread: {error}");
        return EXIT_ERROR;
    }
    let (mut election, leader) = match wait_interruptible(&rx, interrupted) {
        Some((election, Ok(leader))) => (election, leader),
        Some((_, Err(error))) => {
            let _ = session.close();
            return fail_recipe(&error, json);
        }
        None => {
            let _ = session.close();
            eprintln!("kvctl: interrupted before being elected");
            return EXIT_ERROR;
        }
    };
    println!("{}", leader_line(&leader, json));
    let mut code = EXIT_OK;
    while !interrupted.load(Ordering::Acquire) {
        if !election.is_leader() {
            eprintln!("kvctl: leadership lost: the session's lease expired or was revoked");
            code = EXIT_ERROR;
            break;
        }
        std::thread::sleep(CHECK_PERIOD);
    }
    if let Err(error) = election.resign() {
        eprintln!("kvctl: resigning: {error}");
    }
    let _ = session.close();
    code
}

fn observe(client: &Client, name: &str, interrupted: &AtomicBool, json: bool) -> i32 {
    let mut observer = Observer::new(client, name);
    while !interrupted.load(Ordering::Acquire) {
        match observer.recv_timeout(CHECK_PERIOD * 4) {
            Ok(Some(leader)) => println!("{}", leader_line(&leader, json)),
            Ok(None) => {}
            Err(error) => return fail_recipe(&error, json),
        }
    }
    EXIT_OK
}
