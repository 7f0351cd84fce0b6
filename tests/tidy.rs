//! The architecture, checked (STYLE 17): reads `src/` and fails when a layer reaches past the
//! directions drawn in docs/design.md. The pure core has no I/O, threads, clocks, channels
//! or locks and imports only the vocabulary modules; storage never names messages or roles;
//! transport never names storage; no lower layer names a higher one.

use std::path::{Path, PathBuf};

/// A rule: files under `dir` must not mention any of `forbidden` (outside comments).
struct Rule {
    dir: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

/// Higher layers, which nothing below them may name.
const ABOVE_THE_CORE_LAYERS: [&str; 6] = [
    "crate::node",
    "crate::server",
    "crate::client",
    "crate::cli",
    "crate::testkit",
    "crate::kv",
];

const RULES: &[Rule] = &[
    Rule {
        dir: "src/raft",
        forbidden: &[
            "std::fs",
            "std::net",
            "std::thread",
            "std::time",
            "std::io",
            "std::process",
            "std::sync::Mutex",
            "std::sync::RwLock",
            "std::sync::Condvar",
            "std::sync::mpsc",
            "std::sync::atomic",
            "Instant",
            "SystemTime",
            "crossbeam",
            "parking_lot",
            "thread_rng",
            "rand::rng()",
            "crate::transport",
            "crate::log",
            "tracing",
        ],
        why: "the core is a pure state machine: time, randomness and I/O come from its caller",
    },
    Rule {
        dir: "src/storage",
        forbidden: &["crate::raft", "Message", "RoleKind", "crate::transport"],
        why: "storage knows entries, hard state and snapshots, never messages or roles",
    },
    Rule {
        dir: "src/transport",
        forbidden: &["crate::storage", "crate::state_machine"],
        why: "transport moves messages and knows nothing of storage",
    },
    Rule {
        dir: "src/protocol",
        forbidden: &["crate::server", "crate::client", "crate::node"],
        why: "the client protocol is shared by client and server and depends on neither",
    },
    Rule {
        dir: "src/client",
        forbidden: &["crate::server", "crate::node", "crate::storage"],
        why: "the client speaks the protocol; it never reaches into the server or a node",
    },
    Rule {
        dir: "src/kv",
        forbidden: &["crate::raft", "crate::transport", "crate::storage"],
        why: "the key-value state machine knows nothing of Raft internals",
    },
];

/// The vocabulary modules the core may import from the crate.
const CORE_MAY_IMPORT: [&str; 6] = [
    "crate::raft",
    "crate::types",
    "crate::error",
    "crate::limits",
    "crate::config",
    "crate::storage::Recovered",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a file without comments (line, doc and block comments) and string contents,
/// with each remaining line's number.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_block_comment = false;
    for (number, line) in text.lines().enumerate() {
        let mut code = String::new();
        let mut chars = line.chars().peekable();
        let mut in_string = false;
        while let Some(c) = chars.next() {
            if in_block_comment {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block_comment = false;
                }
                continue;
            }
            if in_string {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_string = false;
                    code.push('"');
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block_comment = true;
                }
                '"' => {
                    in_string = true;
                    code.push('"');
                }
                _ => code.push(c),
            }
        }
        lines.push((number + 1, code));
    }
    lines
}

/// The module the core is in, and its test module, are exempt from nothing: `#[cfg(test)]`
/// code in the core is held to the same rules.
fn violations(rule: &Rule, forbidden: &[&str], root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(&root.join(rule.dir)) {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (number, line) in code_lines(&text) {
            for needle in forbidden {
                if line.contains(needle) {
                    found.push(format!(
                        "{}:{number}: names `{needle}` ({}): {}",
                        file.strip_prefix(root).unwrap_or(&file).display(),
                        rule.why,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn layers_depend_only_in_the_directions_of_the_design() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for rule in RULES {
        let mut forbidden: Vec<&str> = rule.forbidden.to_vec();
        forbidden.extend(ABOVE_THE_CORE_LAYERS.iter().filter(|layer| {
            // The key-value commands are the client protocol's vocabulary: kv, the protocol
            // and the client name them; the core, storage and transport may not.
            let speaks_kv = ["src/kv", "src/protocol", "src/client"].contains(&rule.dir);
            let own = layer.trim_start_matches("crate::") == rule.dir.trim_start_matches("src/");
            !((speaks_kv && **layer == "crate::kv") || own)
        }));
        found.extend(violations(rule, &forbidden, root));
    }
    assert!(
        found.is_empty(),
        "dependency directions broken:\n{}",
        found.join("\n")
    );
}

/// The recipes sit above the client: they may use it and the key-value vocabulary, nothing
/// below or beside it.
#[test]
fn the_recipes_use_the_public_client_only() {
    let rule = Rule {
        dir: "src/recipes",
        forbidden: &[
            "crate::server",
            "crate::node",
            "crate::storage",
            "crate::raft",
            "crate::transport",
            "crate::testkit",
            "crate::cli::",
            "RequestBody",
        ],
        why: "the recipes are built on the public client (leases, transactions, watch) only",
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = violations(&rule, rule.forbidden, root);
    assert!(
        found.is_empty(),
        "recipes reach past the client:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_core_imports_only_the_vocabulary_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for file in rust_files(&root.join("src/raft")) {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (number, line) in code_lines(&text) {
            let mut rest = line.as_str();
            while let Some(start) = rest.find("crate::") {
                let path: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if !CORE_MAY_IMPORT
                    .iter()
                    .any(|allowed| path.starts_with(allowed))
                {
                    found.push(format!(
                        "{}:{number}: `{path}` is not a vocabulary module",
                        file.strip_prefix(root).unwrap_or(&file).display()
                    ));
                }
                rest = &rest[start + path.len().max(1)..];
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The checker itself: it sees a forbidden name in code, and not in comments or strings.
#[test]
fn the_checker_finds_names_in_code_only() {
    let text = "use std::time::Instant; // crossbeam\n/* parking_lot\n */ let s = \"std::fs\";\n";
    let lines = code_lines(text);
    let joined: String = lines.iter().map(|(_, line)| line.as_str()).collect();
    assert!(joined.contains("std::time::Instant"));
    assert!(!joined.contains("crossbeam"));
    assert!(!joined.contains("parking_lot"));
    assert!(!joined.contains("std::fs"));
}
