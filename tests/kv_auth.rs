//! The replicated auth state in the key-value store: auth changes apply deterministically
//! (two stores fed the same log are equal and snapshot to the same bytes), refusals change
//! nothing, snapshots (format 6) carry users, roles, permissions, the enabled flag and the
//! token secret, a format 4 snapshot still restores (auth disabled), and a restore refuses
//! an auth section that is damaged or breaks an invariant, leaving the store as it was.
//! Method: commands applied through `StateMachine::apply`, hand-built snapshot records.

use keyval::codec::{self, RecordRead};
use keyval::kv::auth::{
    AuthError, AuthOperation, Permission, PermissionGrant, Role, User, ROOT_ROLE, ROOT_USER,
};
use keyval::kv::{Command, KeyRange, KvError, KvStore, Response, SnapshotError};
use keyval::{EntryId, LogIndex, StateMachine, Term};

/// Applies `operation` as a server proposes it: checked against the store's auth state now.
fn apply(store: &mut KvStore, index: u64, operation: AuthOperation) -> Response {
    let command = Command::auth(operation).encode().unwrap();
    let bytes = keyval::kv::auth::wrap_checked(store.auth().revision(), &command);
    let answer = store.apply(EntryId::new(Term(1), LogIndex(index)), &bytes);
    Response::decode(&answer).unwrap()
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";

/// root (role root), alice (role app: readwrite on `app/`), auth enabled; applied at 1..=8.
fn log() -> Vec<AuthOperation> {
    vec![
        AuthOperation::UserAdd {
            name: ROOT_USER.into(),
            password_hash: Some(HASH.into()),
        },
        AuthOperation::UserGrantRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        },
        AuthOperation::RoleAdd { name: "app".into() },
        AuthOperation::RoleGrantPermission {
            role: "app".into(),
            grant: PermissionGrant {
                permission: Permission::ReadWrite,
                range: KeyRange::prefix(b"app/"),
            },
        },
        AuthOperation::UserAdd {
            name: "alice".into(),
            password_hash: Some(HASH.into()),
        },
        AuthOperation::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthOperation::UserAdd {
            name: "cert-only".into(),
            password_hash: None,
        },
        AuthOperation::AuthEnable {
            secret: vec![9; 32],
        },
    ]
}

fn enabled_store() -> KvStore {
    let mut store = KvStore::new();
    for (offset, operation) in log().into_iter().enumerate() {
        let index = offset as u64 + 1;
        assert_eq!(
            apply(&mut store, index, operation),
            Response::AuthChanged {
                revision: LogIndex(index)
            }
        );
    }
    store
}

#[test]
fn auth_changes_apply_deterministically_and_snapshot_to_the_same_bytes() {
    let first = enabled_store();
    let second = enabled_store();
    assert_eq!(first, second);
    assert_eq!(first.clone().snapshot(), second.clone().snapshot());
    let auth = first.auth();
    assert!(auth.is_enabled());
    assert_eq!(auth.revision(), LogIndex(8));
    assert!(auth.allows("alice", &KeyRange::prefix(b"app/x"), Permission::Write));
    assert!(!auth.allows("alice", &KeyRange::all(), Permission::Read));
    assert!(auth.is_root(ROOT_USER));
    first.check_invariants();
}

#[test]
fn refused_auth_changes_change_nothing() {
    let mut store = enabled_store();
    let before = store.clone();
    let refusals = [
        (
            AuthOperation::UserDelete {
                name: ROOT_USER.into(),
            },
            AuthError::RootRequired,
        ),
        (
            AuthOperation::UserAdd {
                name: "alice".into(),
                password_hash: None,
            },
            AuthError::UserExists {
                name: "alice".into(),
            },
        ),
        (
            AuthOperation::UserGrantRole {
                user: "alice".into(),
                role: "nope".into(),
            },
            AuthError::RoleNotFound {
                name: "nope".into(),
            },
        ),
        (
            AuthOperation::RoleDelete {
                name: ROOT_ROLE.into(),
            },
            AuthError::RootRoleBuiltIn,
        ),
    ];
    for (offset, (operation, error)) in refusals.into_iter().enumerate() {
        let answer = apply(&mut store, 20 + offset as u64, operation);
        assert_eq!(answer, Response::Rejected(KvError::Auth(error)));
    }
    assert_eq!(store.auth(), before.auth());
    // An auth change never shares its command with data writes.
    let mut mixed = Command::auth(AuthOperation::AuthDisable);
    mixed
        .operations
        .push(keyval::kv::Operation::Delete { key: b"k".to_vec() });
    assert_eq!(mixed.validate(), Err(KvError::AuthNotAlone));
}

#[test]
fn a_snapshot_carries_the_auth_state() {
    let mut store = enabled_store();
    let put = Command::put(b"app/1".to_vec(), b"v".to_vec())
        .encode()
        .unwrap();
    let put = keyval::kv::auth::wrap_checked(LogIndex(8), &put);
    store.apply(EntryId::new(Term(1), LogIndex(9)), &put);
    assert!(store.get(b"app/1").is_some());
    let bytes = store.snapshot();
    let mut restored = KvStore::new();
    let publisher = restored.auth_publisher();
    let generation = publisher.generation();
    restored.restore(&bytes).unwrap();
    assert_eq!(restored, store);
    assert_eq!(restored.auth(), store.auth());
    // The restore was published to whoever watches the store's auth state.
    assert_ne!(publisher.generation(), generation);
    assert!(publisher.current().is_enabled());
    assert_eq!(publisher.current().secret(), &[9; 32]);
}

/// Every record of a snapshot, as (payload) slices.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let RecordRead::Complete { payload, consumed } =
            codec::read_record(rest, u64::MAX).unwrap()
        else {
            panic!("incomplete record");
        };
        out.push(payload.to_vec());
        rest = &rest[consumed..];
    }
    out
}

/// `snapshot` with its auth section (the records from `auth_header` on) replaced.
fn with_auth_section(snapshot: &[u8], auth_at: usize, section: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in records(snapshot).into_iter().take(auth_at).chain(section) {
        codec::write_record(&payload, &mut out);
    }
    out
}

fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).unwrap()
}

fn user(roles: &[&str], credential_revision: u64) -> User {
    User {
        password_hash: Some(HASH.into()),
        roles: roles.iter().map(|role| role.to_string()).collect(),
        credential_revision: LogIndex(credential_revision),
    }
}

#[test]
fn a_restore_refuses_auth_records_that_break_an_invariant() {
    // An empty store at applied 5: header, lease table, auth header.
    let mut base = KvStore::new();
    base.apply(
        EntryId::new(Term(1), LogIndex(5)),
        &Command::put(b"k".to_vec(), b"v".to_vec()).encode().unwrap(),
    );
    let snapshot = base.snapshot();
    let auth_at = records(&snapshot).len() - 1;
    let secret = vec![7u8; 32];
    let header = |enabled: bool, revision: u64, secret: &[u8], users: u64, roles: u64| {
        encoded(&(enabled, LogIndex(revision), secret.to_vec(), users, roles))
    };
    let root = encoded(&(ROOT_USER.to_string(), user(&[ROOT_ROLE], 2)));
    let role_app = encoded(&("app".to_string(), Role::default()));
    // A valid section first, to show the hand-built records match the real layout.
    let valid = with_auth_section(
        &snapshot,
        auth_at,
        vec![
            header(true, 4, &secret, 1, 1),
            root.clone(),
            role_app.clone(),
        ],
    );
    let mut store = KvStore::new();
    store.restore(&valid).unwrap();
    assert!(store.auth().is_enabled() && store.auth().is_root(ROOT_USER));

    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "enabled without a root user",
            vec![header(true, 4, &secret, 0, 0)],
        ),
        (
            "enabled without a secret",
            vec![header(true, 4, &[], 1, 0), root.clone()],
        ),
        (
            "a secret of the wrong length",
            vec![header(false, 4, &[1, 2], 0, 0)],
        ),
        (
            "auth revision after applied",
            vec![header(false, 6, &[], 0, 0)],
        ),
        (
            "a user holding a missing role",
            vec![
                header(false, 4, &[], 1, 0),
                encoded(&("alice".to_string(), user(&["ghost"], 3))),
            ],
        ),
        (
            "users out of order",
            vec![
                header(false, 4, &[], 2, 0),
                encoded(&("b".to_string(), user(&[], 3))),
                encoded(&("a".to_string(), user(&[], 3))),
            ],
        ),
        (
            "a credential revision after the auth revision",
            vec![
                header(false, 4, &[], 1, 0),
                encoded(&("a".to_string(), user(&[], 5))),
            ],
        ),
        (
            "an empty user name",
            vec![
                header(false, 4, &[], 1, 0),
                encoded(&(String::new(), user(&[], 3))),
            ],
        ),
        (
            "a stored root role",
            vec![
                header(false, 4, &[], 0, 1),
                encoded(&(ROOT_ROLE.to_string(), Role::default())),
            ],
        ),
        (
            "an inverted permission range",
            vec![
                header(false, 4, &[], 0, 1),
                encoded(&(
                    "app".to_string(),
                    Role {
                        permissions: vec![PermissionGrant {
                            permission: Permission::Read,
                            range: KeyRange::between(b"b".to_vec(), b"a".to_vec()),
                        }],
                    },
                )),
            ],
        ),
        (
            "more users than follow",
            vec![header(false, 4, &[], 3, 0), root.clone()],
        ),
        (
            "more users than the limit",
            vec![header(false, 4, &[], u64::MAX, 0)],
        ),
        (
            "a record that is not a user",
            vec![header(false, 4, &[], 1, 0), encoded(&7u8)],
        ),
    ];
    for (what, section) in cases {
        let bytes = with_auth_section(&snapshot, auth_at, section);
        let mut target = enabled_store();
        let before = target.clone();
        let result = target.restore(&bytes);
        assert!(result.is_err(), "{what}: restored");
        assert_eq!(
            target, before,
            "{what}: a refused restore changed the store"
        );
        let error = result.unwrap_err().downcast::<SnapshotError>().unwrap();
        assert!(
            matches!(
                *error,
                SnapshotError::Invalid { .. }
                    | SnapshotError::Truncated { .. }
                    | SnapshotError::Record { .. }
            ),
            "{what}: {error}"
        );
    }
}

fn apply_raw(store: &mut KvStore, index: u64, bytes: &[u8]) -> Response {
    Response::decode(&store.apply(EntryId::new(Term(1), LogIndex(index)), bytes)).unwrap()
}

/// etcd's "old auth revision": a write checked against an auth state that changed before it
/// applied is refused whole, and not recorded for its session, so its retry applies once.
#[test]
fn a_write_checked_against_an_older_auth_state_applies_nothing() {
    use keyval::kv::auth::wrap_checked;
    let mut store = enabled_store();
    let register = wrap_checked(LogIndex(8), &Command::register_session().encode().unwrap());
    let registered = apply_raw(&mut store, 9, &register);
    let Response::SessionRegistered { client_id } = registered else {
        panic!("{registered:?}");
    };
    let put = Command::put(b"app/1".to_vec(), b"v".to_vec())
        .with_session(client_id, 1)
        .encode()
        .unwrap();
    // Checked at revision 7, applied at revision 8: refused.
    let stale = apply_raw(&mut store, 10, &wrap_checked(LogIndex(7), &put));
    assert_eq!(
        stale,
        Response::Rejected(KvError::AuthRevisionChanged {
            checked: Some(LogIndex(7)),
            current: LogIndex(8)
        })
    );
    assert!(store.get(b"app/1").is_none());
    assert_eq!(store.session_sequence(client_id), Some(0), "not recorded");
    // Not checked at all while auth is enabled: refused.
    let unchecked = apply_raw(&mut store, 11, &put);
    assert!(matches!(
        unchecked,
        Response::Rejected(KvError::AuthRevisionChanged { checked: None, .. })
    ));
    // The retry, checked against the current state, applies once.
    let current = apply_raw(&mut store, 12, &wrap_checked(LogIndex(8), &put));
    assert!(current.is_written(), "{current:?}");
    assert_eq!(store.get(b"app/1").unwrap().value, b"v");
    assert_eq!(store.session_sequence(client_id), Some(1));
    // The lease keeper's revokes are never wrapped, and still apply.
    let revoke = Command::lease_revoke(keyval::kv::LeaseId(99))
        .encode()
        .unwrap();
    assert!(matches!(
        apply_raw(&mut store, 13, &revoke),
        Response::Rejected(KvError::LeaseNotFound { .. })
    ));
    // A damaged prefix is malformed, never a panic.
    let damaged = apply_raw(&mut store, 14, &[keyval::kv::auth::AUTH_CHECKED_TAG, 0xFF]);
    assert!(matches!(
        damaged,
        Response::Rejected(KvError::Malformed { .. })
    ));
    store.check_invariants();
}
