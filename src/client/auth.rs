//! Authentication of the client's connections, and auth administration calls
//! (`kvctl user|role|auth`).
//!
//! With [`ClientOptions::credentials`](super::ClientOptions::credentials) set, every
//! connection authenticates before its first request: with the token of an earlier
//! authentication when the client holds one (any node verifies it), else with the password.
//! A connection refused `Unauthenticated` later (its token expired or was invalidated) is
//! authenticated again and the request retried, transparently. Without credentials the
//! client sends nothing: a node that requires client certificates then takes the
//! certificate's common name as the user.

use std::time::{Duration, Instant};

use crate::kv::auth::{Permission, PermissionGrant};
use crate::kv::KeyRange;
use crate::protocol::auth::{AuthReply, AuthRequest, Password};
use crate::protocol::{RequestBody, ResponseBody, ServerError};
use crate::types::LogIndex;

use super::connection::{CallError, Connection};
use super::{protocol, Client, ClientError};

/// How long past the call's deadline the client waits for an authentication's answer (a
/// failed one is answered late on purpose).
const AUTHENTICATE_GRACE: Duration = Duration::from_millis(500);

/// A user name and password to authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl Credentials {
    /// `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What authenticating a connection came to.
pub(super) enum AuthOutcome {
    /// The connection may be used.
    Ready,
    /// The call ends with this error.
    Failed(ClientError),
    /// The connection broke or did not answer: try another node (`waited`: the attempt
    /// used up its time).
    ConnectionLost { waited: bool, reason: String },
    /// The node is busy: try again after a backoff.
    Again(String),
}

impl Client {
    /// Authenticates `connection` if the client has credentials and it has not yet.
    pub(super) fn ensure_authenticated(
        &self,
        connection: &Connection,
        deadline: Instant,
    ) -> AuthOutcome {
        let Some(credentials) = &self.inner.options.credentials else {
            return AuthOutcome::Ready;
        };
        let mut authenticated = connection.authenticated.lock();
        if *authenticated {
            return AuthOutcome::Ready;
        }
        let token = self.inner.token.lock().clone();
        if let Some(token) = token {
            match self.authenticate_with(connection, RequestBody::PresentToken { token }, deadline)
            {
                AuthOutcome::Ready => {
                    *authenticated = true;
                    return AuthOutcome::Ready;
                }
                // Expired or invalidated: fall back to the password.
                AuthOutcome::Failed(_) => {
                    self.inner.token.lock().take();
                }
                other => return other,
            }
        }
        let body = RequestBody::Authenticate {
            user: credentials.user.clone(),
            password: Password(credentials.password.clone()),
        };
        let outcome = self.authenticate_with(connection, body, deadline);
        if matches!(outcome, AuthOutcome::Ready) {
            *authenticated = true;
        }
        outcome
    }

    fn authenticate_with(
        &self,
        connection: &Connection,
        body: RequestBody,
        deadline: Instant,
    ) -> AuthOutcome {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let frame = match connection.call(&body, timeout, deadline + AUTHENTICATE_GRACE) {
            Ok(frame) => frame,
            Err(CallError::Failed { reason, .. }) => {
                return AuthOutcome::ConnectionLost {
                    waited: false,
                    reason,
                }
            }
            Err(CallError::TimedOut) => {
                return AuthOutcome::ConnectionLost {
                    waited: true,
                    reason: "no answer to the authentication".into(),
                }
            }
            Err(CallError::Full) => {
                return AuthOutcome::Again("too many requests in flight".into())
            }
        };
        match frame.result {
            Ok(ResponseBody::Authenticated(reply)) => {
                *self.inner.token.lock() = Some(reply.token);
                AuthOutcome::Ready
            }
            Ok(other) => AuthOutcome::Failed(protocol(&format!(
                "an authentication answered with {other:?}"
            ))),
            // Auth is not enabled: nothing to prove.
            Err(ServerError::Refused { .. }) => AuthOutcome::Ready,
            Err(error @ (ServerError::Busy { .. } | ServerError::Unavailable { .. })) => {
                AuthOutcome::Again(error.to_string())
            }
            Err(error) => AuthOutcome::Failed(ClientError::Server(error)),
        }
    }

    /// Forgets that `connection` authenticated (its token was refused): the next attempt
    /// authenticates again.
    pub(super) fn authentication_lost(&self, connection: &Connection) {
        *connection.authenticated.lock() = false;
        self.inner.token.lock().take();
    }

    /// Sends an auth administration request to the leader.
    pub fn auth_request(&self, request: AuthRequest) -> Result<AuthReply, ClientError> {
        let change = request.is_change();
        let body = RequestBody::Auth(request);
        match self.execute(&body, change, self.deadline()).result? {
            ResponseBody::Auth(reply) => Ok(reply),
            other => Err(protocol(&format!(
                "an auth request answered with {other:?}"
            ))),
        }
    }

    fn auth_change(&self, request: AuthRequest) -> Result<LogIndex, ClientError> {
        match self.auth_request(request)? {
            AuthReply::Changed { revision } => Ok(revision),
            other => Err(protocol(&format!("an auth change answered with {other:?}"))),
        }
    }

    /// Adds a user (`password: None`: it authenticates only by client certificate).
    pub fn user_add(&self, name: &str, password: Option<&str>) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::UserAdd {
            name: name.into(),
            password: password.map(Password::from),
        })
    }

    /// Deletes a user.
    pub fn user_delete(&self, name: &str) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::UserDelete { name: name.into() })
    }

    /// Changes a user's password.
    pub fn user_change_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::UserChangePassword {
            name: name.into(),
            password: Some(Password::from(password)),
        })
    }

    /// Gives `user` the role `role`.
    pub fn user_grant_role(&self, user: &str, role: &str) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::UserGrantRole {
            user: user.into(),
            role: role.into(),
        })
    }

    /// Takes the role `role` from `user`.
    pub fn user_revoke_role(&self, user: &str, role: &str) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::UserRevokeRole {
            user: user.into(),
            role: role.into(),
        })
    }

    /// Adds a role.
    pub fn role_add(&self, name: &str) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::RoleAdd { name: name.into() })
    }

    /// Deletes a role.
    pub fn role_delete(&self, name: &str) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::RoleDelete { name: name.into() })
    }

    /// Grants `role` `permission` on `range`.
    pub fn role_grant_permission(
        &self,
        role: &str,
        permission: Permission,
        range: KeyRange,
    ) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::RoleGrantPermission {
            role: role.into(),
            grant: PermissionGrant { permission, range },
        })
    }

    /// Takes from `role` its permission on exactly `range`.
    pub fn role_revoke_permission(
        &self,
        role: &str,
        range: KeyRange,
    ) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::RoleRevokePermission {
            role: role.into(),
            range,
        })
    }

    /// Enables auth (refused unless user `root` holds role `root`).
    pub fn auth_enable(&self) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::Enable)
    }

    /// Disables auth.
    pub fn auth_disable(&self) -> Result<LogIndex, ClientError> {
        self.auth_change(AuthRequest::Disable)
    }
}
