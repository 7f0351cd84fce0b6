//! Log events on the [`tracing`] facade, and the small call-site API older modules use:
//! `log::info("closing client connection", &[("remote", &remote)])`.
//!
//! The library never installs a subscriber: the binaries do (`keyval::cli::logging`, text or
//! JSON lines on stderr), an embedder plugs in its own, and with none every event costs one
//! disabled-callsite check. New code may call `tracing::info!` and friends directly, with
//! values recorded with Display (`leader = %id`), not Debug.
//!
//! This module's functions emit one `tracing` event at target `keyval::log`: the message, and
//! the fields rendered once as `key=value` pairs (values quoted when they hold spaces, quotes
//! or `=`) in the field [`FIELDS`], which the binaries' formatter splits back into fields.

use std::fmt::{self, Display, Write as _};
use std::str::FromStr;

/// The name of the field that carries the pre-rendered `key=value` pairs of an event logged
/// through this module.
pub const FIELDS: &str = "keyval.fields";

/// How important an event is; lower is more important.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed and needs attention.
    Error = 1,
    /// Something unusual that the program handled.
    Warn = 2,
    /// Normal milestones: start, stop, elections, leadership, membership, snapshots.
    Info = 3,
    /// Detail for debugging: connections, flow control, compaction.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl Level {
    /// The matching `tracing` level.
    pub fn to_tracing(self) -> tracing::Level {
        match self {
            Level::Error => tracing::Level::ERROR,
            Level::Warn => tracing::Level::WARN,
            Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        }
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Level, String> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            "trace" => Ok(Level::Trace),
            other => Err(format!(
                "unknown log level {other:?}; use error, warn, info, debug or trace"
            )),
        }
    }
}

/// Whether the installed subscriber (if any) records events at `level` from this module.
pub fn enabled(level: Level) -> bool {
    match level {
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        Level::Trace => tracing::enabled!(tracing::Level::TRACE),
    }
}

/// Emits one event at `level` with `fields` as `key=value` pairs.
pub fn event(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    if !enabled(level) {
        return;
    }
    let fields = Pairs(fields);
    match level {
        Level::Error => tracing::error!(keyval.fields = %fields, "{message}"),
        Level::Warn => tracing::warn!(keyval.fields = %fields, "{message}"),
        Level::Info => tracing::info!(keyval.fields = %fields, "{message}"),
        Level::Debug => tracing::debug!(keyval.fields = %fields, "{message}"),
        Level::Trace => tracing::trace!(keyval.fields = %fields, "{message}"),
    }
}

/// [`event`] at `Error`.
pub fn error(message: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Error, message, fields);
}

/// [`event`] at `Warn`.
pub fn warn(message: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Warn, message, fields);
}

/// [`event`] at `Info`.
pub fn info(message: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Info, message, fields);
}

/// [`event`] at `Debug`.
pub fn debug(message: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Debug, message, fields);
}

/// Renders fields as `key=value key=value`.
struct Pairs<'a>(&'a [(&'a str, &'a dyn Display)]);

impl Display for Pairs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::new();
        for (key, value) in self.0 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(key);
            line.push('=');
            push_value(&mut line, &value.to_string());
        }
        f.write_str(&line)
    }
}

/// Appends `value`, quoted and escaped when it is empty or holds spaces, quotes or `=`.
pub fn push_value(line: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && c != '"' && c != '=' && !c.is_control());
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// Splits pairs rendered by this module (`key=value key="quoted value"`) back into keys and
/// values. Malformed input (never produced here) ends the split where it starts.
pub fn split_pairs(rendered: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = rendered.trim_start();
    while let Some(equals) = rest.find('=') {
        let key = rest[..equals].to_string();
        rest = &rest[equals + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((at, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(at + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => text.push('\n'),
                        Some((_, 'u')) => {
                            // \u{hex}
                            let mut hex = String::new();
                            for (_, c) in chars.by_ref() {
                                match c {
                                    '{' => {}
                                    '}' => break,
                                    c => hex.push(c),
                                }
                            }
                            if let Some(c) =
                                u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                            {
                                text.push(c);
                            }
                        }
                        Some((_, c)) => text.push(c),
                        None => break,
                    },
                    c => text.push(c),
                }
            }
            let Some(end) = end else {
                pairs.push((key, text));
                break;
            };
            value = text;
            rest = &quoted[end..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        pairs.push((key, value));
        rest = rest.trim_start();
    }
    pairs
}

/// Formats a value with `Debug` for use as a field (`&Debugged(&x)`). Prefer a Display form:
/// operators read `leader=2`, not `leader=Some(NodeId(2))`.
pub struct Debugged<'a, T: fmt::Debug>(pub &'a T);

impl<T: fmt::Debug> Display for Debugged<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_spaces_are_quoted() {
        let mut line = String::new();
        push_value(&mut line, "bad frame: \"x\"");
        assert_eq!(line, "\"bad frame: \\\"x\\\"\"");
        let mut plain = String::new();
        push_value(&mut plain, "127.0.0.1:80");
        assert_eq!(plain, "127.0.0.1:80");
    }

    #[test]
    fn rendered_pairs_split_back() {
        let tricky = "a \"b\" = c\\d\ne\u{1}";
        let fields: [(&str, &dyn Display); 4] = [
            ("remote", &"127.0.0.1:80"),
            ("reason", &tricky),
            ("empty", &""),
            ("count", &3),
        ];
        let rendered = Pairs(&fields).to_string();
        assert_eq!(
            split_pairs(&rendered),
            vec![
                ("remote".to_string(), "127.0.0.1:80".to_string()),
                ("reason".to_string(), tricky.to_string()),
                ("empty".to_string(), String::new()),
                ("count".to_string(), "3".to_string()),
            ]
        );
        assert!(split_pairs("").is_empty());
    }

    #[test]
    fn levels_parse() {
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert_eq!("trace".parse::<Level>(), Ok(Level::Trace));
        assert!("loud".parse::<Level>().is_err());
    }
}
