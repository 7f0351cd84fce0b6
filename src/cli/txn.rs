//! `kvctl txn`: a transaction read from stdin or a file, in `etcdctl txn`'s format.
//!
//! ```text
//! value("config/version") = "7"        <- compares, one a line, all must hold
//! mod("lock") < "100"
//!                                      <- blank line
//! put config/version 8                 <- operations run when every compare holds
//! del --prefix config/old/
//!                                      <- blank line
//! get config/version                   <- operations run otherwise
//! ```
//!
//! Compares: `TARGET("KEY") OP "OPERAND"` with TARGET one of `value`/`val`, `version`/`ver`/`v`,
//! `create`/`c`, `mod`/`m`, `lease` (0: no lease), and OP one of `=`, `!=`, `<`, `>`; numeric operands may be written
//! without quotes. Operations: `put KEY VALUE [--prev-kv] [--lease ID]`, `del KEY [END] [--prefix]
//! [--prev-kv]`, `get KEY [END] [--prefix] [--limit N]`. Arguments are separated by spaces;
//! an argument with spaces or special bytes is written in double quotes with `\"`, `\\`, `\n`,
//! `\t` and `\xNN` escapes. Lines starting with `#` are ignored. With `--interactive`, each
//! section is prompted for on stderr, as `etcdctl txn -i` does on stdout.

use std::io::BufRead;

use serde_json::json;

use crate::client::Client;
use crate::kv::{
    Compare, CompareOp, CompareTarget, KeyRange, Txn, TxnOp, TxnOpResponse, TxnResponse, Versioned,
    WriteOutcome, SCAN_LIMIT_MAX,
};
use crate::types::LogIndex;

use super::kvctl::{fail, metadata_json, text, EXIT_ERROR, EXIT_OK, EXIT_USAGE};

/// The most entries a `get --prefix` or `get KEY END` in a transaction returns by default.
pub const TXN_RANGE_LIMIT_DEFAULT: usize = 1000;

const _: () = assert!(TXN_RANGE_LIMIT_DEFAULT <= SCAN_LIMIT_MAX);

/// A line of transaction input that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TxnParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// The section headers `--interactive` prompts with, as etcdctl words them.
const PROMPTS: [&str; 3] = [
    "compares:",
    "success requests (get, put, del):",
    "failure requests (get, put, del):",
];

/// Reads transaction text from `input`: up to the end, or — interactively — up to the blank
/// line that ends the third section, prompting for each section on stderr.
pub fn read_input(input: impl BufRead, interactive: bool) -> std::io::Result<String> {
    let mut text = String::new();
    let mut section = 0;
    if interactive {
        eprintln!("{}", PROMPTS[0]);
    }
    for line in input.lines() {
        let line = line?;
        text.push_str(&line);
        text.push('\n');
        if line.trim().is_empty() {
            section += 1;
            if section == PROMPTS.len() {
                break;
            }
            if interactive {
                eprintln!("\n{}", PROMPTS[section]);
            }
        }
    }
    Ok(text)
}

/// Parses a whole transaction: compares, a blank line, the `then` operations, a blank line,
/// the `otherwise` operations. Trailing sections may be left out.
pub fn parse_txn(input: &str) -> Result<Txn, TxnParseError> {
    let mut txn = Txn::new();
    let mut section = 0;
    for (number, line) in input.lines().enumerate() {
        let number = number + 1;
        let error = |message: String| TxnParseError {
            line: number,
            message,
        };
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            section += 1;
            continue;
        }
        match section {
            0 => txn.compares.push(parse_compare(line).map_err(error)?),
            1 => txn.then.push(parse_operation(line).map_err(error)?),
            2 => txn.otherwise.push(parse_operation(line).map_err(error)?),
            _ => {
                return Err(error(
                    "a fourth section: a transaction has compares, success and failure \
                     operations, separated by one blank line each"
                        .into(),
                ))
            }
        }
    }
    Ok(txn)
}

/// Parses `TARGET("KEY") OP "OPERAND"`.
fn parse_compare(line: &str) -> Result<Compare, String> {
    let syntax = || format!("{line:?} is not a compare like value(\"key\") = \"v\"");
    let (target, rest) = line.split_once('(').ok_or_else(syntax)?;
    let (key, rest) = unquote(rest.trim_start()).map_err(|message| format!("key: {message}"))?;
    let rest = rest.trim_start().strip_prefix(')').ok_or_else(syntax)?;
    let mut arguments = split_arguments(rest)?;
    if arguments.len() != 2 {
        return Err(syntax());
    }
    let operand = arguments.pop().unwrap_or_default();
    let op = match arguments.pop().unwrap_or_default().as_slice() {
        b"=" | b"==" => CompareOp::Equal,
        b"!=" => CompareOp::NotEqual,
        b"<" => CompareOp::Less,
        b">" => CompareOp::Greater,
        other => {
            return Err(format!(
                "unknown operator {:?}: use =, !=, < or >",
                String::from_utf8_lossy(other)
            ))
        }
    };
    let number = || -> Result<u64, String> {
        std::str::from_utf8(&operand)
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{:?} is not a number (0 to 2^64-1)",
                    String::from_utf8_lossy(&operand)
                )
            })
    };
    let target = match target.trim() {
        "value" | "val" => CompareTarget::Value(operand.clone()),
        "version" | "ver" | "v" => CompareTarget::Version(number()?),
        "create" | "c" => CompareTarget::CreateRevision(LogIndex(number()?)),
        "mod" | "m" => CompareTarget::ModRevision(LogIndex(number()?)),
        // etcd's lease 0 is "no lease"; other ids as kvctl prints them (hex).
        "lease" => {
            let operand = String::from_utf8_lossy(&operand).into_owned();
            if operand.trim() == "0" {
                CompareTarget::Lease(None)
            } else {
                CompareTarget::Lease(Some(super::lease::parse_lease_id(&operand)?))
            }
        }
        other => {
            return Err(format!(
                "unknown compare target {other:?}: use value, version, create, mod or lease"
            ))
        }
    };
    Ok(Compare { key, op, target })
}

/// Parses one operation line.
fn parse_operation(line: &str) -> Result<TxnOp, String> {
    let arguments = split_arguments(line)?;
    let Some((command, arguments)) = arguments.split_first() else {
        return Err("empty operation".into());
    };
    let mut positional = Vec::new();
    let mut prefix = false;
    let mut previous = false;
    let mut limit = None;
    let mut lease = None;
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        match argument.as_slice() {
            b"--prefix" => prefix = true,
            b"--prev-kv" => previous = true,
            b"--lease" => {
                let value = rest.next().ok_or("--lease needs a lease id")?;
                lease = Some(super::lease::parse_lease_id(&String::from_utf8_lossy(
                    value,
                ))?);
            }
            b"--limit" => {
                let value = rest.next().ok_or("--limit needs a number")?;
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse::<usize>().ok())
                    .filter(|limit| (1..=SCAN_LIMIT_MAX).contains(limit))
                    .ok_or_else(|| format!("--limit must be 1 to {SCAN_LIMIT_MAX}"))?;
                limit = Some(parsed);
            }
            flag if flag.starts_with(b"--") => {
                return Err(format!("unknown flag {:?}", String::from_utf8_lossy(flag)))
            }
            _ => positional.push(argument.clone()),
        }
    }
    let command = String::from_utf8_lossy(command).into_owned();
    let usage = |form: &str| format!("usage: {form}");
    // A range when there is an END or --prefix; a single key otherwise.
    let range = |positional: &[Vec<u8>]| -> Option<KeyRange> {
        match positional {
            [key] if prefix => Some(KeyRange::prefix(key)),
            [key, end] => Some(KeyRange::between(key.clone(), end.clone())),
            _ => None,
        }
    };
    match command.as_str() {
        "put" => {
            if prefix || limit.is_some() || positional.len() != 2 {
                return Err(usage("put KEY VALUE [--prev-kv] [--lease ID]"));
            }
            let value = positional.pop().unwrap_or_default();
            let key = positional.pop().unwrap_or_default();
            let mut operation = TxnOp::put(key, value);
            if let Some(lease) = lease {
                operation = operation.with_lease(lease);
            }
            Ok(if previous {
                operation.with_previous()
            } else {
                operation
            })
        }
        "del" | "delete" => {
            let form = "del KEY [END] [--prefix] [--prev-kv]";
            if lease.is_some() || limit.is_some() || positional.is_empty() || positional.len() > 2 {
                return Err(usage(form));
            }
            if prefix && positional.len() == 2 {
                return Err(format!("--prefix takes no END; {}", usage(form)));
            }
            let operation = match range(&positional) {
                Some(range) => TxnOp::delete_range(range),
                None => TxnOp::delete(positional.swap_remove(0)),
            };
            Ok(if previous {
                operation.with_previous()
            } else {
                operation
            })
        }
        "get" => {
            let form = "get KEY [END] [--prefix] [--limit N]";
            if previous || lease.is_some() || positional.is_empty() || positional.len() > 2 {
                return Err(usage(form));
            }
            if prefix && positional.len() == 2 {
                return Err(format!("--prefix takes no END; {}", usage(form)));
            }
            match range(&positional) {
                Some(range) => Ok(TxnOp::range(
                    range,
                    limit.unwrap_or(TXN_RANGE_LIMIT_DEFAULT),
                )),
                None if limit.is_some() => Err(format!(
                    "--limit needs a range (END or --prefix); {}",
                    usage(form)
                )),
                None => Ok(TxnOp::get(positional.swap_remove(0))),
            }
        }
        other => Err(format!("unknown operation {other:?}: use put, get or del")),
    }
}

/// Splits a line into arguments: runs of non-space characters, or double-quoted strings with
/// escapes.
fn split_arguments(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut arguments = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let (argument, after) = unquote(rest)?;
            if after
                .chars()
                .next()
                .is_some_and(|next| !next.is_whitespace())
            {
                return Err("a quoted argument must be followed by a space".into());
            }
            arguments.push(argument);
            rest = after;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            arguments.push(rest.as_bytes()[..end].to_vec());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    Ok(arguments)
}

/// Reads one double-quoted string at the start of `input`; returns its bytes and what follows.
fn unquote(input: &str) -> Result<(Vec<u8>, &str), String> {
    let mut chars = input.char_indices();
    if chars.next().map(|(_, first)| first) != Some('"') {
        return Err("expected a double-quoted string".into());
    }
    let mut out = Vec::new();
    while let Some((position, character)) = chars.next() {
        match character {
            '"' => return Ok((out, &input[position + 1..])),
            '\\' => {
                let escaped = chars.next().map(|(_, escaped)| escaped);
                match escaped {
                    Some('"') => out.push(b'"'),
                    Some('\\') => out.push(b'\\'),
                    Some('n') => out.push(b'\n'),
                    Some('t') => out.push(b'\t'),
                    Some('x') => {
                        let high = chars.next().and_then(|(_, digit)| digit.to_digit(16));
                        let low = chars.next().and_then(|(_, digit)| digit.to_digit(16));
                        match (high, low) {
                            (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
                            _ => return Err("\\x needs two hex digits".into()),
                        }
                    }
                    other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
                }
            }
            other => {
                let mut buffer = [0; 4];
                out.extend_from_slice(other.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    Err("unterminated quoted string".into())
}

/// Runs `kvctl txn`: parses the input, sends the transaction, prints the outcome. Exit 0
/// whichever branch ran (as etcdctl does: the output says SUCCESS or FAILURE), 2 on a parse
/// error.
pub fn run(client: &Client, input: &str, json: bool) -> i32 {
    let txn = match parse_txn(input) {
        Ok(txn) => txn,
        Err(error) => {
            if json {
                println!(
                    "{}",
                    json!({ "error": error.to_string(), "line": error.line })
                );
            } else {
                eprintln!("kvctl txn: {error}");
            }
            return EXIT_USAGE;
        }
    };
    match client.txn(txn) {
        Ok(response) => {
            if json {
                println!("{}", response_json(&response));
            } else {
                print_response(&response);
            }
            EXIT_OK
        }
        Err(error) => fail(&error, json),
    }
}

/// Reads the input of `kvctl txn` from `file` or stdin; prints why on failure.
pub fn input(file: Option<&std::path::Path>, interactive: bool) -> Result<String, i32> {
    let read = match file {
        Some(path) => std::fs::read_to_string(path),
        None => read_input(std::io::stdin().lock(), interactive),
    };
    read.map_err(|error| {
        let source = file.map_or("stdin".into(), |path| path.display().to_string());
        eprintln!("kvctl txn: reading {source}: {error}");
        EXIT_ERROR
    })
}

/// etcdctl's plain output: SUCCESS or FAILURE, then each operation's answer after a blank line.
fn print_response(response: &TxnResponse) {
    println!(
        "{}",
        if response.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    let print_entries = |entries: &[(Vec<u8>, Versioned)]| {
        for (key, versioned) in entries {
            println!("{}\n{}", text(key), text(&versioned.value));
        }
    };
    for operation in &response.responses {
        println!();
        match operation {
            TxnOpResponse::Put(outcome) => {
                println!("OK");
                if let Some(previous) = &outcome.previous_value {
                    println!("{}", text(previous));
                }
            }
            TxnOpResponse::Delete { deleted, previous } => {
                println!("{deleted}");
                print_entries(previous);
            }
            TxnOpResponse::Get(found) => {
                if let Some(versioned) = found {
                    println!("{}", text(&versioned.value));
                }
            }
            TxnOpResponse::Range(page) => {
                print_entries(&page.entries);
                if page.more {
                    eprintln!("(more keys follow; raise --limit)");
                }
            }
        }
    }
}

fn entries_json(entries: &[(Vec<u8>, Versioned)]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|(key, versioned)| {
            json!({
                "key": text(key),
                "value": text(&versioned.value),
                "metadata": metadata_json(&versioned.metadata),
            })
        })
        .collect()
}

fn outcome_json(outcome: &WriteOutcome) -> serde_json::Value {
    json!({
        "previous": outcome.previous.as_ref().map(metadata_json),
        "current": outcome.current.as_ref().map(metadata_json),
        "previous_value": outcome.previous_value.as_deref().map(text),
    })
}

/// The `--json` output.
pub fn response_json(response: &TxnResponse) -> serde_json::Value {
    let responses: Vec<_> = response
        .responses
        .iter()
        .map(|operation| match operation {
            TxnOpResponse::Put(outcome) => json!({ "put": outcome_json(outcome) }),
            TxnOpResponse::Delete { deleted, previous } => json!({
                "delete": { "deleted": deleted, "previous": entries_json(previous) }
            }),
            TxnOpResponse::Get(found) => json!({
                "get": {
                    "found": found.is_some(),
                    "value": found.as_ref().map(|versioned| text(&versioned.value)),
                    "metadata": found.as_ref().map(|versioned| metadata_json(&versioned.metadata)),
                }
            }),
            TxnOpResponse::Range(page) => json!({
                "range": { "entries": entries_json(&page.entries), "more": page.more }
            }),
        })
        .collect();
    json!({
        "succeeded": response.succeeded,
        "revision": response.revision.0,
        "responses": responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::LeaseId;

    #[test]
    fn etcdctl_style_input_parses() {
        let input = r#"value("config/version") = "7"
mod("lock") < "100"
ver("k") != 0
c("k") > "3"
lease("k") = "0"
lease("k") != 7

put config/version 8 --prev-kv
put "key with space" "say \"hi\"\n"
del --prefix config/old/
del a c
get config/version

get --prefix config/ --limit 5
get a b
"#;
        let txn = parse_txn(input).unwrap();
        assert_eq!(
            txn.compares,
            vec![
                Compare::value("config/version", CompareOp::Equal, "7"),
                Compare::mod_revision("lock", CompareOp::Less, 100),
                Compare::version("k", CompareOp::NotEqual, 0),
                Compare::create_revision("k", CompareOp::Greater, 3),
                Compare::lease("k", CompareOp::Equal, None),
                Compare::lease("k", CompareOp::NotEqual, Some(LeaseId(7))),
            ]
        );
        assert_eq!(
            txn.then,
            vec![
                TxnOp::put("config/version", "8").with_previous(),
                TxnOp::put("key with space", "say \"hi\"\n"),
                TxnOp::delete_range(KeyRange::prefix(b"config/old/")),
                TxnOp::delete_range(KeyRange::between(b"a".to_vec(), b"c".to_vec())),
                TxnOp::get("config/version"),
            ]
        );
        assert_eq!(
            txn.otherwise,
            vec![
                TxnOp::range(KeyRange::prefix(b"config/"), 5),
                TxnOp::range(
                    KeyRange::between(b"a".to_vec(), b"b".to_vec()),
                    TXN_RANGE_LIMIT_DEFAULT
                ),
            ]
        );
    }

    #[test]
    fn sections_may_be_empty_or_left_out() {
        let txn = parse_txn("\nput k v\n").unwrap();
        assert!(txn.compares.is_empty() && txn.otherwise.is_empty());
        assert_eq!(txn.then, vec![TxnOp::put("k", "v")]);
        assert_eq!(parse_txn("").unwrap(), Txn::new());
        let txn = parse_txn("# a comment\nversion(\"k\") = \"0\"\n\n\nget k\n").unwrap();
        assert_eq!(txn.otherwise, vec![TxnOp::get("k")]);
        assert!(txn.then.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("valu(\"k\") = \"v\"\n", 1, "unknown compare target"),
            ("value(\"k\") ~ \"v\"\n", 1, "unknown operator"),
            ("value(k) = \"v\"\n", 1, "key"),
            ("version(\"k\") = \"x\"\n", 1, "not a number"),
            ("version(\"k\") =\n", 1, "not a compare"),
            ("\nput k\n", 2, "usage: put"),
            ("\nput k v\nfrob k\n", 3, "unknown operation"),
            ("\n\nget k --limit 0\n", 3, "--limit"),
            ("\n\nget k --limit 3\n", 3, "needs a range"),
            ("\ndel a b --prefix\n", 2, "--prefix takes no END"),
            ("\nput \"k v\n", 2, "unterminated"),
            ("\nput \"k\\q\" v\n", 2, "unknown escape"),
            ("\nput k v --frob\n", 2, "unknown flag"),
            ("\n\n\nput k v\n", 4, "fourth section"),
        ];
        for (input, line, needle) in cases {
            let error = parse_txn(input).unwrap_err();
            assert_eq!(error.line, line, "{input:?}: {error}");
            assert!(error.message.contains(needle), "{input:?}: {error}");
        }
    }

    #[test]
    fn interactive_reading_stops_after_the_third_section() {
        let input = "value(\"k\") = \"v\"\n\nput k w\n\nget k\n\nnot read\n";
        let read = read_input(input.as_bytes(), false).unwrap();
        assert_eq!(read, "value(\"k\") = \"v\"\n\nput k w\n\nget k\n\n");
    }

    #[test]
    fn quoted_bytes_and_hex_escapes() {
        let arguments = split_arguments(r#"put "\x00\xff" "tab\there""#).unwrap();
        assert_eq!(
            arguments,
            vec![b"put".to_vec(), vec![0, 0xFF], b"tab\there".to_vec()]
        );
        assert!(split_arguments(r#""a"b"#).is_err());
    }

    #[test]
    fn lease_ids_are_hex_as_kvctl_prints_them() {
        assert_eq!(
            parse_operation("put k v --lease 1f"),
            Ok(TxnOp::put("k", "v").with_lease(LeaseId(31)))
        );
        assert!(parse_operation("del k --lease 1f").is_err());
        assert!(parse_operation("put k v --lease 0").is_err());
        assert_eq!(
            parse_compare("lease(\"k\") = \"1f\""),
            Ok(Compare::lease("k", CompareOp::Equal, Some(LeaseId(31))))
        );
        assert_eq!(
            parse_compare("lease(\"k\") = 0"),
            Ok(Compare::lease("k", CompareOp::Equal, None))
        );
    }
}
