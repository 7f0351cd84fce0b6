//! A tiny structured logger for the server and the binaries: one line per event on stderr,
//! `ts level node=n1 msg="..." key=value`, filtered by a process-wide level.
//!
//! ```text
//! 2026-11-22T15:38:31.123Z INFO node=n1 msg="client connection closed" remote=127.0.0.1:5012 reason="bad frame: checksum mismatch"
//! ```
//!
//! Deliberately small: no dependency, no allocation when a level is filtered out, and values
//! that contain spaces or quotes are quoted so a line stays machine-splittable.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How important an event is; lower is more important.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed and needs attention.
    Error = 1,
    /// Something unusual that the program handled.
    Warn = 2,
    /// Normal milestones: start, stop, leadership, closed connections.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
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
            other => Err(format!(
                "unknown log level {other:?}; use error, warn, info or debug"
            )),
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static NODE: OnceLock<String> = OnceLock::new();

/// Sets the most detailed level that is printed (default `Info`).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Names the node every line is tagged with (`node=n1`); the first call wins.
pub fn set_node(node: impl Display) {
    let _ = NODE.set(node.to_string());
}

/// Whether events at `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints one event at `level` with `fields` as `key=value` pairs.
pub fn event(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    if !enabled(level) {
        return;
    }
    let mut line = String::with_capacity(128);
    write_timestamp(&mut line, SystemTime::now());
    let _ = write!(line, " {}", level.name());
    if let Some(node) = NODE.get() {
        let _ = write!(line, " node={node}");
    }
    line.push_str(" msg=");
    push_value(&mut line, message);
    for (key, value) in fields {
        let _ = write!(line, " {key}=");
        push_value(&mut line, &value.to_string());
    }
    line.push('\n');
    // One write per line so lines from several threads do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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

/// Appends `value`, quoted and escaped when it is empty or holds spaces, quotes or `=`.
fn push_value(line: &mut String, value: &str) {
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

/// Appends `time` as RFC 3339 UTC with milliseconds.
fn write_timestamp(line: &mut String, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a value with `Debug` for use as a field (`&Debugged(&x)`).
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
    fn timestamps_are_rfc3339() {
        let mut line = String::new();
        write_timestamp(
            &mut line,
            UNIX_EPOCH + std::time::Duration::from_millis(1_795_361_911_123),
        );
        assert_eq!(line, "2026-11-22T15:38:31.123Z");
    }

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
    fn levels_parse() {
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
    }
}
