//! The binaries' one log subscriber: every `tracing` event of the process (the library's,
//! through [`crate::log`] or `tracing` macros) becomes one line on stderr, as text or JSON.
//!
//! ```text
//! 2026-11-22T15:38:31.123Z INFO node=n1 msg="leader changed" term=3 leader=2
//! {"ts":"2026-11-22T15:38:31.123Z","level":"INFO","node":"n1","target":"keyval::node","msg":"leader changed","term":3,"leader":"2"}
//! ```
//!
//! A layer of our own rather than `tracing-subscriber`'s `fmt`: the text line keeps the
//! format keyval always printed (`key=value`, quoted only when needed, `node=` up front), the
//! pairs logged through [`crate::log`] become real JSON fields, and no ANSI colour ever
//! reaches a log file.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

use crate::log::{self, Level};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `ts LEVEL node=n1 msg="..." key=value`: for people and grep.
    #[default]
    Text,
    /// One JSON object per line: for log shippers.
    Json,
}

/// Installs the process's subscriber: events at `level` or more important, written as
/// `format` lines on stderr, tagged `node=NODE` unless an event names its own `node`.
/// Returns false (and changes nothing) when a subscriber was already installed.
pub fn install(level: Level, format: LogFormat, node: Option<String>) -> bool {
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::from_level(level.to_tracing()))
        .with(LineLayer { format, node });
    tracing::subscriber::set_global_default(subscriber).is_ok()
}

/// Writes each event as one line on stderr.
struct LineLayer {
    format: LogFormat,
    node: Option<String>,
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let line = format_line(
            self.format,
            self.node.as_deref(),
            SystemTime::now(),
            *metadata.level(),
            metadata.target(),
            fields,
        );
        // One write per line so lines from several threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// A field's value as recorded.
#[derive(Debug, PartialEq)]
enum Value {
    Text(String),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => f.write_str(text),
            Value::Signed(value) => write!(f, "{value}"),
            Value::Unsigned(value) => write!(f, "{value}"),
            Value::Float(value) => write!(f, "{value}"),
            Value::Bool(value) => write!(f, "{value}"),
        }
    }
}

/// An event's message and fields, in order.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    node: Option<String>,
    pairs: Vec<(String, Value)>,
}

impl Fields {
    fn push(&mut self, name: &str, value: Value) {
        match name {
            log::FIELDS => {
                for (key, value) in log::split_pairs(&value.to_string()) {
                    self.pairs.push((key, Value::Text(value)));
                }
            }
            "message" => self.message = value.to_string(),
            "node" => self.node = Some(value.to_string()),
            _ => self.pairs.push((name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields and the message arrive here; their Debug is their Display.
        self.push(field.name(), Value::Text(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), Value::Text(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), Value::Signed(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), Value::Unsigned(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), Value::Float(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), Value::Bool(value));
    }
}

/// One log line, newline included.
fn format_line(
    format: LogFormat,
    node: Option<&str>,
    time: SystemTime,
    level: tracing::Level,
    target: &str,
    fields: Fields,
) -> String {
    let mut line = String::with_capacity(160);
    let mut timestamp = String::with_capacity(24);
    write_timestamp(&mut timestamp, time);
    let node = fields.node.as_deref().or(node);
    match format {
        LogFormat::Text => {
            line.push_str(&timestamp);
            let _ = write!(line, " {level}");
            if let Some(node) = node {
                line.push_str(" node=");
                log::push_value(&mut line, node);
            }
            line.push_str(" msg=");
            log::push_value(&mut line, &fields.message);
            for (key, value) in &fields.pairs {
                let _ = write!(line, " {key}=");
                log::push_value(&mut line, &value.to_string());
            }
        }
        LogFormat::Json => {
            // Written by hand, not through a map, to keep the order: ts, level, node,
            // target, msg, then the fields as logged (a repeated key keeps its first value).
            let mut object = JsonObject::default();
            object.insert("ts", timestamp.into());
            object.insert("level", level.to_string().into());
            if let Some(node) = node {
                object.insert("node", node.into());
            }
            object.insert("target", target.into());
            object.insert("msg", fields.message.into());
            for (key, value) in fields.pairs {
                let value = match value {
                    Value::Text(text) => serde_json::Value::from(text),
                    Value::Signed(value) => value.into(),
                    Value::Unsigned(value) => value.into(),
                    Value::Float(value) => value.into(),
                    Value::Bool(value) => value.into(),
                };
                object.insert(&key, value);
            }
            line.push_str(&object.text);
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// A JSON object written key by key in order (without its closing brace).
#[derive(Default)]
struct JsonObject {
    text: String,
    keys: Vec<String>,
}

impl JsonObject {
    fn insert(&mut self, key: &str, value: serde_json::Value) {
        if self.keys.iter().any(|known| known == key) {
            return;
        }
        self.text.push(if self.keys.is_empty() { '{' } else { ',' });
        self.text
            .push_str(&serde_json::Value::from(key).to_string());
        self.text.push(':');
        self.text.push_str(&value.to_string());
        self.keys.push(key.to_string());
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TIME_TEXT: &str = "2026-11-22T15:38:31.123Z";

    fn time() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_361_911_123)
    }

    fn fields() -> Fields {
        let mut fields = Fields::default();
        fields.push("message", Value::Text("closing client connection".into()));
        fields.push(
            log::FIELDS,
            Value::Text("remote=127.0.0.1:5012 reason=\"bad frame\"".into()),
        );
        fields.push("term", Value::Unsigned(3));
        fields
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut line = String::new();
        write_timestamp(&mut line, time());
        assert_eq!(line, TIME_TEXT);
    }

    #[test]
    fn text_lines_keep_the_node_and_key_value_pairs() {
        let line = format_line(
            LogFormat::Text,
            Some("n1"),
            time(),
            tracing::Level::INFO,
            "keyval::log",
            fields(),
        );
        assert_eq!(
            line,
            format!(
                "{TIME_TEXT} INFO node=n1 msg=\"closing client connection\" \
                 remote=127.0.0.1:5012 reason=\"bad frame\" term=3\n"
            )
        );
    }

    #[test]
    fn json_lines_carry_each_pair_as_a_field() {
        let mut fields = fields();
        fields.push("node", Value::Text("n2".into()));
        let line = format_line(
            LogFormat::Json,
            Some("n1"),
            time(),
            tracing::Level::WARN,
            "keyval::node",
            fields,
        );
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["ts"], TIME_TEXT);
        assert_eq!(value["level"], "WARN");
        assert_eq!(value["node"], "n2", "the event's own node wins");
        assert_eq!(value["msg"], "closing client connection");
        assert_eq!(value["remote"], "127.0.0.1:5012");
        assert_eq!(value["reason"], "bad frame");
        assert_eq!(value["term"], 3);
        assert!(line.starts_with("{\"ts\":"), "{line}");
    }
}
