//! Unit tests of the auth state: permission coverage, the lock-out rules, refusals.
use super::*;

fn prefix(text: &str) -> KeyRange {
    KeyRange::prefix(text.as_bytes())
}

fn key(text: &str) -> KeyRange {
    let mut end = text.as_bytes().to_vec();
    end.push(0);
    KeyRange::between(text.as_bytes().to_vec(), end)
}

fn state_with(grants: &[(Permission, KeyRange)]) -> AuthState {
    let mut state = AuthState::default();
    let mut index = 0;
    let mut next = || {
        index += 1;
        LogIndex(index)
    };
    let hash = Some("$argon2id$x".to_string());
    for operation in [
        AuthOperation::UserAdd {
            name: "alice".into(),
            password_hash: hash,
        },
        AuthOperation::RoleAdd { name: "app".into() },
        AuthOperation::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
    ] {
        state.apply(next(), operation).unwrap();
    }
    for (permission, range) in grants {
        let grant = PermissionGrant {
            permission: *permission,
            range: range.clone(),
        };
        let operation = AuthOperation::RoleGrantPermission {
            role: "app".into(),
            grant,
        };
        state.apply(next(), operation).unwrap();
    }
    state
}

#[test]
fn prefix_permissions_cover_their_keys_and_ranges_only() {
    let state = state_with(&[(Permission::ReadWrite, prefix("app/"))]);
    assert!(state.allows("alice", &key("app/x"), Permission::Write));
    assert!(state.allows("alice", &prefix("app/a"), Permission::Read));
    assert!(!state.allows("alice", &key("other"), Permission::Read));
    assert!(!state.allows("alice", &KeyRange::all(), Permission::Read));
    assert!(!state.allows("bob", &key("app/x"), Permission::Read));
    let read_only = state_with(&[(Permission::Read, prefix("app/"))]);
    assert!(!read_only.allows("alice", &key("app/x"), Permission::Write));
    assert!(!read_only.allows("alice", &key("app/x"), Permission::ReadWrite));
}

#[test]
fn adjacent_ranges_cover_together() {
    let state = state_with(&[
        (
            Permission::Read,
            KeyRange::between(b"b".to_vec(), b"d".to_vec()),
        ),
        (
            Permission::Read,
            KeyRange::between(b"a".to_vec(), b"b".to_vec()),
        ),
    ]);
    let wanted = KeyRange::between(b"a".to_vec(), b"d".to_vec());
    assert!(state.allows("alice", &wanted, Permission::Read));
    let wider = KeyRange::between(b"a".to_vec(), b"e".to_vec());
    assert!(!state.allows("alice", &wider, Permission::Read));
    assert!(!state.allows(
        "alice",
        &KeyRange::starting_at(b"a".to_vec()),
        Permission::Read
    ));
    let open = state_with(&[(Permission::Read, KeyRange::starting_at(b"a".to_vec()))]);
    assert!(open.allows(
        "alice",
        &KeyRange::starting_at(b"b".to_vec()),
        Permission::Read
    ));
}

#[test]
fn enable_needs_root_and_root_cannot_be_removed_while_enabled() {
    let mut state = state_with(&[]);
    let secret = vec![7; AUTH_SECRET_BYTES];
    let enable = AuthOperation::AuthEnable {
        secret: secret.clone(),
    };
    assert_eq!(
        state.apply(LogIndex(10), enable.clone()),
        Err(AuthError::RootMissing)
    );
    assert!(!state.enabled);
    let before = state.clone();
    state
        .apply(
            LogIndex(11),
            AuthOperation::UserAdd {
                name: ROOT_USER.into(),
                password_hash: None,
            },
        )
        .unwrap();
    assert_eq!(
        state.apply(LogIndex(12), enable.clone()),
        Err(AuthError::RootMissing)
    );
    state
        .apply(
            LogIndex(13),
            AuthOperation::UserGrantRole {
                user: ROOT_USER.into(),
                role: ROOT_ROLE.into(),
            },
        )
        .unwrap();
    state.apply(LogIndex(14), enable).unwrap();
    assert!(state.enabled && state.secret == secret);
    assert_eq!(state.revision, LogIndex(14));
    let delete = AuthOperation::UserDelete {
        name: ROOT_USER.into(),
    };
    assert_eq!(
        state.apply(LogIndex(15), delete.clone()),
        Err(AuthError::RootRequired)
    );
    let revoke = AuthOperation::UserRevokeRole {
        user: ROOT_USER.into(),
        role: ROOT_ROLE.into(),
    };
    assert_eq!(
        state.apply(LogIndex(16), revoke),
        Err(AuthError::RootRequired)
    );
    assert_eq!(state.revision, LogIndex(14), "refusals change nothing");
    assert!(state.allows(ROOT_USER, &KeyRange::all(), Permission::ReadWrite));
    state
        .apply(LogIndex(17), AuthOperation::AuthDisable)
        .unwrap();
    state.apply(LogIndex(18), delete).unwrap();
    assert_ne!(state, before);
    assert_eq!(state.check(LogIndex(18)), Ok(()));
}

#[test]
fn deleting_a_role_takes_it_from_its_users() {
    let mut state = state_with(&[(Permission::Read, prefix("a"))]);
    assert!(state.allows("alice", &key("a1"), Permission::Read));
    state
        .apply(
            LogIndex(20),
            AuthOperation::RoleDelete { name: "app".into() },
        )
        .unwrap();
    assert!(!state.allows("alice", &key("a1"), Permission::Read));
    assert!(state.users["alice"].roles.is_empty());
    assert_eq!(state.check(LogIndex(20)), Ok(()));
}

#[test]
fn password_changes_move_the_credential_revision() {
    let mut state = state_with(&[]);
    let before = state.users["alice"].credential_revision;
    let change = AuthOperation::UserChangePassword {
        name: "alice".into(),
        password_hash: Some("$argon2id$y".into()),
    };
    state.apply(LogIndex(30), change).unwrap();
    assert_ne!(state.users["alice"].credential_revision, before);
    assert_eq!(state.users["alice"].credential_revision, LogIndex(30));
}

#[test]
fn invalid_operations_are_refused_before_the_state_is_looked_at() {
    let mut state = AuthState::default();
    let bad = [
        AuthOperation::RoleAdd {
            name: String::new(),
        },
        AuthOperation::UserAdd {
            name: "x".repeat(AUTH_NAME_BYTES_MAX + 1),
            password_hash: None,
        },
        AuthOperation::UserAdd {
            name: "x".into(),
            password_hash: Some("plain".into()),
        },
        AuthOperation::AuthEnable { secret: vec![1] },
        AuthOperation::RoleRevokePermission {
            role: "r".into(),
            range: KeyRange::between(b"b".to_vec(), b"a".to_vec()),
        },
    ];
    for operation in bad {
        assert!(state.apply(LogIndex(1), operation).is_err());
    }
    assert_eq!(state, AuthState::default());
}
