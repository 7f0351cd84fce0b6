//! Authentication and authorization on the client port (see `docs/security.md`).
//!
//! - **Who**: a connection authenticates with a password ([`RequestBody::Authenticate`]) or a
//!   token ([`RequestBody::PresentToken`]), or — without either — is the common name of its
//!   verified TLS client certificate (etcd's `--client-cert-auth` behaviour), if such a
//!   user exists.
//! - **Tokens**: HMAC-SHA256 over `(user, expiry, credential revision)` with the cluster
//!   secret that `auth enable` put in the log, so any node verifies any node's token; the
//!   credential revision moves when the password changes or the user is deleted and re-added,
//!   which invalidates older tokens at once, and a new `auth enable` makes a new secret.
//!   Each request re-verifies the connection's token against the current state (a MAC and
//!   two map lookups), so an expiry or a revocation takes effect on the next request.
//! - **Passwords** are verified on the server's `{id}-auth` thread, never on an event loop:
//!   Argon2 takes tens of milliseconds by design. A failure is answered only after a delay
//!   that doubles with each failure of the connection or of the user
//!   ([`failure_delay`]), and logged with the remote address; the connection reads nothing
//!   more until it is answered.
//! - **What**: [`Authorizer`] checks every request against the current [`AuthState`], which
//!   the store publishes after each change ([`AuthPublisher`]); a check costs a few map
//!   lookups, never a walk of the store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

use crate::codec;
use crate::kv::auth::{
    AuthOperation, AuthPublisher, AuthState, Permission, AUTH_SECRET_BYTES, ROOT_ROLE,
};
use crate::kv::{Command, KeyRange, KvError, LeaseId, Operation, ReadRequest, Response, TxnOp};
use crate::log;
use crate::protocol::auth::{
    single_key, AuthReply, AuthRequest, AuthToken, Authenticated, Needed, Password,
};
use crate::protocol::{RequestBody, ResponseBody, ServerError};

use super::event_loop::{AdminAnswer, AdminSender};
use super::Shared;

/// How long a token is valid by default (`--auth-token-ttl`).
pub const AUTH_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// Password verifications queued for the auth thread at most; more are refused `Busy`.
pub const AUTH_QUEUE_MAX: usize = 64;

/// The delay before the first failed authentication is answered.
pub const FAILURE_DELAY_MIN: Duration = Duration::from_millis(100);

/// The longest delay before a failed authentication is answered.
pub const FAILURE_DELAY_MAX: Duration = Duration::from_millis(3200);

/// Users whose failures the auth thread remembers at most (the oldest are forgotten).
const FAILING_USERS_MAX: usize = 4096;

/// How long an Authenticate request may stay in flight: past the longest failure delay, so
/// its answer always arrives.
pub(super) const AUTHENTICATE_DEADLINE: Duration = Duration::from_secs(10);

const _: () = assert!(FAILURE_DELAY_MAX.as_millis() * 2 < AUTHENTICATE_DEADLINE.as_millis());

/// The longest password accepted, in bytes (Argon2 takes any length; this bounds the work).
pub const PASSWORD_BYTES_MAX: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// How long to hold the answer to a failed authentication, after `failures` consecutive
/// failures (of the connection or the user, whichever is more): 100 ms, doubling, at most
/// 3.2 s.
pub fn failure_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    (FAILURE_DELAY_MIN * 2u32.pow(doublings)).min(FAILURE_DELAY_MAX)
}

/// Hashes `password` with Argon2id (default parameters: 19 MiB, 2 passes) and a fresh
/// random salt, as a PHC string. Slow by design: never call it on an event loop.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|error| format!("no randomness for a salt: {error}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| error.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| format!("hashing the password: {error}"))
}

/// Whether `password` matches the PHC string `hash`. Slow by design.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn token_mac(secret: &[u8], token: &AuthToken) -> Option<HmacSha256> {
    let message = codec::encode(&(
        &token.user,
        token.expires_unix_ms,
        token.credential_revision,
    ))
    .ok()?;
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(&message);
    Some(mac)
}

/// Issues a token for `user` valid for `ttl` from now, signed with the state's secret.
pub fn issue_token(state: &AuthState, user: &str, ttl: Duration) -> Option<AuthToken> {
    let credential_revision = state.user(user)?.credential_revision;
    let mut token = AuthToken {
        user: user.to_string(),
        expires_unix_ms: unix_ms(SystemTime::now()).saturating_add(ttl.as_millis() as u64),
        credential_revision,
        mac: Vec::new(),
    };
    token.mac = token_mac(state.secret(), &token)?
        .finalize()
        .into_bytes()
        .to_vec();
    Some(token)
}

/// Checks `token` against the current state: signed with the current secret, not expired,
/// its user still there with the same credentials. Returns why not.
pub fn verify_token(state: &AuthState, token: &AuthToken) -> Result<(), String> {
    if state.secret().len() != AUTH_SECRET_BYTES {
        return Err("auth is not enabled".into());
    }
    let signed =
        token_mac(state.secret(), token).is_some_and(|mac| mac.verify_slice(&token.mac).is_ok());
    if !signed {
        return Err("the token is not valid (auth was re-enabled, or it was forged)".into());
    }
    if token.expires_unix_ms <= unix_ms(SystemTime::now()) {
        return Err("the token expired".into());
    }
    match state.user(&token.user) {
        Some(user) if user.credential_revision == token.credential_revision => Ok(()),
        Some(_) => Err("the user's password changed since the token was issued".into()),
        None => Err("the user no longer exists".into()),
    }
}

/// Who a request runs as: the connection's authenticated user, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user; `None` when the connection did not authenticate.
    pub user: Option<String>,
}

impl Identity {
    /// A request running as `user`.
    pub fn user(user: impl Into<String>) -> Identity {
        Identity {
            user: Some(user.into()),
        }
    }
}

/// Checks requests against one auth state. Cheap to make: it holds an `Arc`.
#[derive(Clone, Debug)]
pub struct Authorizer {
    state: Arc<AuthState>,
}

impl Authorizer {
    /// An authorizer of `state`.
    pub fn new(state: Arc<AuthState>) -> Authorizer {
        Authorizer { state }
    }

    /// The state it checks against.
    pub fn state(&self) -> &Arc<AuthState> {
        &self.state
    }

    /// Whether requests are checked at all.
    pub fn is_enabled(&self) -> bool {
        self.state.is_enabled()
    }

    /// The user of `identity`, or why there is none. Auth must be enabled.
    fn user<'a>(&self, identity: &'a Identity) -> Result<&'a str, ServerError> {
        identity
            .user
            .as_deref()
            .ok_or_else(|| ServerError::Unauthenticated {
                reason: "auth is enabled: authenticate first".into(),
            })
    }

    /// Allows any authenticated user (and anybody while auth is disabled).
    pub fn check_authenticated(&self, identity: &Identity) -> Result<(), ServerError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.user(identity).map(|_| ())
    }

    /// Allows `permission` on every key of `range` (a watch calls this with
    /// [`Permission::Read`] on its range). Always allowed while auth is disabled.
    pub fn check_range(
        &self,
        identity: &Identity,
        range: &KeyRange,
        permission: Permission,
    ) -> Result<(), ServerError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let user = self.user(identity)?;
        // Read and write are checked apart: separate grants of each add up to both.
        let halves: &[Permission] = match permission {
            Permission::ReadWrite => &[Permission::Read, Permission::Write],
            Permission::Read => &[Permission::Read],
            Permission::Write => &[Permission::Write],
        };
        for half in halves {
            if !self.state.allows(user, range, *half) {
                return Err(ServerError::PermissionDenied {
                    user: user.to_string(),
                    needed: Needed::Keys {
                        range: range.clone(),
                        permission,
                    },
                });
            }
        }
        Ok(())
    }

    /// Allows `permission` on `key`.
    pub fn check_key(
        &self,
        identity: &Identity,
        key: &[u8],
        permission: Permission,
    ) -> Result<(), ServerError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.check_range(identity, &single_key(key), permission)
    }

    /// Allows only a user holding the root role to do `action`.
    pub fn check_root(&self, identity: &Identity, action: &str) -> Result<(), ServerError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let user = self.user(identity)?;
        if self.state.is_root(user) {
            return Ok(());
        }
        Err(ServerError::PermissionDenied {
            user: user.to_string(),
            needed: Needed::Root {
                action: action.to_string(),
            },
        })
    }

    /// Checks a read.
    pub fn check_read(
        &self,
        identity: &Identity,
        request: &ReadRequest,
    ) -> Result<(), ServerError> {
        match request {
            ReadRequest::Get { key } => self.check_key(identity, key, Permission::Read),
            ReadRequest::Scan { range, .. } => self.check_range(identity, range, Permission::Read),
        }
    }

    /// Checks a write: every key it writes (and reads: a compare, a compare-and-swap, a
    /// previous value, a transaction's gets), both branches of a transaction, and for a
    /// lease revoke every key attached to the lease (`lease_keys`), as etcd does.
    pub fn check_command(
        &self,
        identity: &Identity,
        command: &Command,
        lease_keys: impl Fn(LeaseId) -> Option<Vec<Vec<u8>>>,
    ) -> Result<(), ServerError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.user(identity)?;
        let written = |key: &[u8], previous: bool| {
            let permission = if previous {
                Permission::ReadWrite
            } else {
                Permission::Write
            };
            self.check_key(identity, key, permission)
        };
        let previous = command.return_previous;
        for operation in &command.operations {
            match operation {
                Operation::Put { key, .. }
                | Operation::Delete { key }
                | Operation::PutWithLease { key, .. } => written(key, previous)?,
                // A failed comparison answers with the key's value.
                Operation::Cas { key, .. } => written(key, true)?,
                Operation::DeleteRange { range } => {
                    self.check_range(identity, range, Permission::Write)?
                }
                Operation::Txn(txn) => {
                    for compare in &txn.compares {
                        self.check_key(identity, &compare.key, Permission::Read)?;
                    }
                    for op in txn.then.iter().chain(&txn.otherwise) {
                        self.check_txn_op(identity, op)?;
                    }
                }
                Operation::LeaseGrant { .. } => {}
                Operation::LeaseRevoke { lease } => {
                    for key in lease_keys(*lease).unwrap_or_default() {
                        written(&key, false)?;
                    }
                }
                Operation::Auth(_) => {
                    return Err(ServerError::Invalid(KvError::Auth(
                        crate::kv::auth::AuthError::Invalid {
                            reason: "auth changes are made with auth requests".into(),
                        },
                    )))
                }
            }
        }
        Ok(())
    }

    fn check_txn_op(&self, identity: &Identity, op: &TxnOp) -> Result<(), ServerError> {
        let with_previous = |previous: bool| {
            if previous {
                Permission::ReadWrite
            } else {
                Permission::Write
            }
        };
        match op {
            TxnOp::Put {
                key,
                return_previous,
                ..
            }
            | TxnOp::Delete {
                key,
                return_previous,
            } => self.check_key(identity, key, with_previous(*return_previous)),
            TxnOp::DeleteRange {
                range,
                return_previous,
            } => self.check_range(identity, range, with_previous(*return_previous)),
            TxnOp::Get { key } => self.check_key(identity, key, Permission::Read),
            TxnOp::Range { range, .. } => self.check_range(identity, range, Permission::Read),
        }
    }

    /// Checks an auth administration request: root only, except the status (any
    /// authenticated user) and a user looking at itself.
    pub fn check_auth_request(
        &self,
        identity: &Identity,
        request: &AuthRequest,
    ) -> Result<(), ServerError> {
        match request {
            AuthRequest::Status => self.check_authenticated(identity),
            AuthRequest::UserGet { name } if identity.user.as_deref() == Some(name.as_str()) => {
                Ok(())
            }
            _ => self.check_root(identity, "auth administration"),
        }
    }
}

/// A cache of the published auth state for one event loop: a refresh is one atomic load
/// unless the state changed.
pub(super) struct AuthView {
    publisher: AuthPublisher,
    generation: u64,
    authorizer: Authorizer,
}

impl AuthView {
    pub(super) fn new(publisher: AuthPublisher) -> AuthView {
        let generation = publisher.generation();
        let authorizer = Authorizer::new(publisher.current());
        AuthView {
            publisher,
            generation,
            authorizer,
        }
    }

    /// The authorizer of the current state.
    pub(super) fn current(&mut self) -> &Authorizer {
        let generation = self.publisher.generation();
        if generation != self.generation {
            self.generation = generation;
            self.authorizer = Authorizer::new(self.publisher.current());
        }
        &self.authorizer
    }
}

/// What a connection knows of who it is.
#[derive(Default)]
pub(super) struct ConnectionAuth {
    /// The token of its latest successful authentication.
    pub(super) token: Option<AuthToken>,
    /// The common name of its verified client certificate (looked up once).
    pub(super) certificate_user: Option<Option<String>>,
    /// Failed authentications in a row.
    pub(super) failures: u32,
    /// An authentication is being verified: read no further request until it is answered.
    pub(super) authenticating: bool,
}

impl ConnectionAuth {
    /// The identity of the connection's next request under `state` (auth enabled), or why
    /// it has none that is valid.
    pub(super) fn identity(&self, state: &AuthState) -> Result<Identity, ServerError> {
        if let Some(token) = &self.token {
            return match verify_token(state, token) {
                Ok(()) => Ok(Identity::user(token.user.clone())),
                Err(reason) => Err(ServerError::Unauthenticated { reason }),
            };
        }
        match self.certificate_user.as_ref().and_then(Option::as_ref) {
            Some(name) if state.user(name).is_some() => Ok(Identity::user(name.clone())),
            _ => Ok(Identity::default()),
        }
    }
}

/// The common name of a DER certificate.
pub(super) fn common_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .find_map(|name| name.as_str().ok().map(str::to_string));
    name
}

/// One password to verify for a connection.
pub(super) struct VerifyJob {
    pub(super) tag: u64,
    pub(super) user: String,
    pub(super) password: String,
    pub(super) remote: String,
    /// The connection's failures in a row so far.
    pub(super) failures: u32,
    pub(super) state: Arc<AuthState>,
    pub(super) answers: AdminSender,
}

/// The handle of the `{id}-auth` thread.
pub(crate) struct AuthWorker {
    jobs: Option<Sender<VerifyJob>>,
    thread: Option<JoinHandle<()>>,
}

impl AuthWorker {
    /// Starts the thread; tokens it issues live for `token_ttl`.
    pub(super) fn spawn(name: String, token_ttl: Duration) -> std::io::Result<AuthWorker> {
        let (jobs, receiver) = crossbeam_channel::bounded(AUTH_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&receiver, token_ttl))?;
        Ok(AuthWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a verification; gives it back when the queue is full or the thread is gone.
    pub(super) fn submit(&self, job: VerifyJob) -> Result<(), ServerError> {
        let Some(jobs) = &self.jobs else {
            return Err(ServerError::Unavailable {
                reason: "the server is stopping".into(),
            });
        };
        jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => ServerError::Busy {
                reason: format!("{AUTH_QUEUE_MAX} authentications are queued already"),
            },
            TrySendError::Disconnected(_) => ServerError::Unavailable {
                reason: "the auth thread stopped".into(),
            },
        })
    }

    /// Stops the thread (answers it still holds are dropped: the loops are gone too).
    pub(super) fn shutdown(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuthWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A failed answer held back until `due`.
struct Held {
    due: Instant,
    sequence: u64,
    answer: AdminAnswer,
    answers: AdminSender,
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Held) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Held) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

/// The auth thread: verifies passwords in turn, answers successes at once and failures after
/// their delay, until its job channel closes.
fn run(jobs: &Receiver<VerifyJob>, token_ttl: Duration) {
    let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut failing_users: HashMap<String, u32> = HashMap::new();
    let mut sequence = 0u64;
    // A hash to verify unknown users against, so they take as long as known ones.
    let decoy = hash_password("keyval decoy password").unwrap_or_default();
    loop {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(next)| next.due <= now) {
            if let Some(Reverse(due)) = held.pop() {
                due.answers.send(due.answer);
            }
        }
        let job = match held.peek() {
            Some(Reverse(next)) => match jobs.recv_timeout(next.due.saturating_duration_since(now))
            {
                Ok(job) => job,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            },
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let user = job.state.user(&job.user);
        let hash = user.and_then(|user| user.password_hash.as_deref());
        let matches = verify_password(&job.password, hash.unwrap_or(&decoy)) && hash.is_some();
        let token = matches
            .then(|| issue_token(&job.state, &job.user, token_ttl))
            .flatten();
        if let Some(token) = token {
            failing_users.remove(&job.user);
            let reply = Authenticated {
                user: job.user.clone(),
                token,
                ttl_ms: token_ttl.as_millis() as u64,
            };
            job.answers.send(AdminAnswer {
                tag: job.tag,
                result: Ok(ResponseBody::Authenticated(reply)),
            });
            continue;
        }
        if failing_users.len() >= FAILING_USERS_MAX && !failing_users.contains_key(&job.user) {
            failing_users.clear();
        }
        let user_failures = failing_users.entry(job.user.clone()).or_insert(0);
        *user_failures = user_failures.saturating_add(1);
        let failures = (*user_failures).max(job.failures.saturating_add(1));
        let delay = failure_delay(failures);
        log::warn(
            "authentication failed",
            &[
                ("remote", &job.remote),
                ("user", &job.user),
                ("failures", &failures),
                ("answer_delay_ms", &delay.as_millis()),
            ],
        );
        sequence += 1;
        held.push(Reverse(Held {
            due: Instant::now() + delay,
            sequence,
            answer: AdminAnswer {
                tag: job.tag,
                result: Err(ServerError::AuthenticationFailed),
            },
            answers: job.answers,
        }));
    }
}

/// Serves an auth administration request on an admin thread: reads after a read barrier,
/// changes hashed (passwords) or given a secret here, then proposed and waited for.
pub(super) fn serve_admin(
    shared: &Shared,
    request: AuthRequest,
    deadline: Instant,
    checked_at: crate::types::LogIndex,
) -> Result<ResponseBody, ServerError> {
    let node = &shared.node;
    if !request.is_change() {
        node.read_barrier(deadline)
            .map_err(|error| super::event_loop::read_error(shared, error))?;
        let state = node.with_state_machine(|kv| kv.auth());
        return read_reply(&state, request).map(ResponseBody::Auth);
    }
    let operation = into_operation(request)?;
    let bytes = Command::auth(operation)
        .encode()
        .map_err(ServerError::Invalid)?;
    // Applied only if the auth state is still the one the root check saw.
    let bytes = crate::kv::auth::wrap_checked(checked_at, &bytes);
    let answer = node
        .propose(bytes, deadline)
        .map_err(|error| super::event_loop::propose_error(shared, error))?;
    match Response::decode(&answer) {
        Ok(Response::AuthChanged { revision }) => {
            Ok(ResponseBody::Auth(AuthReply::Changed { revision }))
        }
        Ok(Response::Rejected(error)) => Err(ServerError::Invalid(error)),
        Ok(other) => Err(ServerError::Indeterminate {
            reason: format!("applied, with an unexpected answer {other:?}"),
        }),
        Err(error) => Err(ServerError::Indeterminate {
            reason: format!("applied, but the response does not decode: {error}"),
        }),
    }
}

fn hashed(password: Option<Password>) -> Result<Option<String>, ServerError> {
    let Some(Password(password)) = password else {
        return Ok(None);
    };
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(ServerError::Refused {
            reason: format!("a password must be 1 to {PASSWORD_BYTES_MAX} bytes"),
        });
    }
    hash_password(&password)
        .map(Some)
        .map_err(|reason| ServerError::Unavailable { reason })
}

/// The log operation of a change request: passwords hashed, a new secret for enable.
fn into_operation(request: AuthRequest) -> Result<AuthOperation, ServerError> {
    Ok(match request {
        AuthRequest::UserAdd { name, password } => AuthOperation::UserAdd {
            name,
            password_hash: hashed(password)?,
        },
        AuthRequest::UserDelete { name } => AuthOperation::UserDelete { name },
        AuthRequest::UserChangePassword { name, password } => AuthOperation::UserChangePassword {
            name,
            password_hash: hashed(password)?,
        },
        AuthRequest::UserGrantRole { user, role } => AuthOperation::UserGrantRole { user, role },
        AuthRequest::UserRevokeRole { user, role } => AuthOperation::UserRevokeRole { user, role },
        AuthRequest::RoleAdd { name } => AuthOperation::RoleAdd { name },
        AuthRequest::RoleDelete { name } => AuthOperation::RoleDelete { name },
        AuthRequest::RoleGrantPermission { role, grant } => {
            AuthOperation::RoleGrantPermission { role, grant }
        }
        AuthRequest::RoleRevokePermission { role, range } => {
            AuthOperation::RoleRevokePermission { role, range }
        }
        AuthRequest::Enable => {
            let mut secret = vec![0u8; AUTH_SECRET_BYTES];
            rand::rngs::OsRng
                .try_fill_bytes(&mut secret)
                .map_err(|error| ServerError::Unavailable {
                    reason: format!("no randomness for the token secret: {error}"),
                })?;
            AuthOperation::AuthEnable { secret }
        }
        AuthRequest::Disable => AuthOperation::AuthDisable,
        AuthRequest::UserGet { .. }
        | AuthRequest::UserList
        | AuthRequest::RoleGet { .. }
        | AuthRequest::RoleList
        | AuthRequest::Status => {
            return Err(ServerError::Refused {
                reason: "not a change".into(),
            })
        }
    })
}

fn read_reply(state: &AuthState, request: AuthRequest) -> Result<AuthReply, ServerError> {
    let refused = |error: crate::kv::auth::AuthError| ServerError::Invalid(KvError::Auth(error));
    Ok(match request {
        AuthRequest::UserGet { name } => {
            let user = state.user(&name).ok_or_else(|| {
                refused(crate::kv::auth::AuthError::UserNotFound { name: name.clone() })
            })?;
            AuthReply::User {
                roles: user.roles.iter().cloned().collect(),
                has_password: user.password_hash.is_some(),
                name,
            }
        }
        AuthRequest::UserList => AuthReply::Names(state.user_names()),
        AuthRequest::RoleGet { name } => {
            let permissions = match state.role(&name) {
                Some(role) => role.permissions.clone(),
                None if name == ROOT_ROLE => Vec::new(),
                None => {
                    return Err(refused(crate::kv::auth::AuthError::RoleNotFound { name }));
                }
            };
            AuthReply::Role { name, permissions }
        }
        AuthRequest::RoleList => AuthReply::Names(state.role_names()),
        AuthRequest::Status => AuthReply::Status {
            enabled: state.is_enabled(),
            revision: state.revision(),
        },
        _ => {
            return Err(ServerError::Refused {
                reason: "not a read".into(),
            })
        }
    })
}

/// Whether `body` may be sent before authenticating even with auth enabled.
pub(super) fn is_open(body: &RequestBody) -> bool {
    matches!(
        body,
        RequestBody::Status | RequestBody::Authenticate { .. } | RequestBody::PresentToken { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_delays_double_up_to_the_cap() {
        assert_eq!(failure_delay(0), FAILURE_DELAY_MIN);
        assert_eq!(failure_delay(1), FAILURE_DELAY_MIN);
        assert_eq!(failure_delay(2), FAILURE_DELAY_MIN * 2);
        assert_eq!(failure_delay(3), FAILURE_DELAY_MIN * 4);
        assert_eq!(failure_delay(6), FAILURE_DELAY_MAX);
        assert_eq!(failure_delay(u32::MAX), FAILURE_DELAY_MAX);
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horse!", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
