//! `keyval --config FILE`: every flag as a TOML key, with the precedence operators expect —
//! flags, then `KEYVAL_*` environment variables, then the file, then the defaults — and
//! `keyval --print-config`, which shows the effective value of every setting and where it came
//! from.
//!
//! A key is a flag's long name, with `-` or `_` (`data-dir` or `data_dir`); values are TOML
//! strings, integers, floats, booleans, or arrays for comma-separated flags. The file is
//! applied by giving clap each key the command line and the environment left at its default,
//! so every value goes through the same parsing and checks as a flag. An unknown key is refused
//! with its name and line; so is a value of the wrong shape.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::node::NodeArgs;

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Flag,
    Environment,
    File,
    Default,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Environment => "environment",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

/// Parses the `keyval` command line (with `--config` applied), exiting as clap does on
/// `--help`, `--version` or a usage error, and on `--print-config` after printing.
pub fn parse_node_args() -> NodeArgs {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match parse_from(argv) {
        Ok(Parsed::Args(args)) => *args,
        Ok(Parsed::Printed) => std::process::exit(0),
        Err(Failure::Clap(error)) => error.exit(),
        Err(Failure::Config(message)) => {
            eprintln!("keyval: error: {message}");
            std::process::exit(2);
        }
    }
}

/// What parsing produced.
pub enum Parsed {
    /// The node's arguments.
    Args(Box<NodeArgs>),
    /// `--print-config` printed the configuration.
    Printed,
}

/// Why parsing failed.
#[derive(Debug)]
pub enum Failure {
    /// A usage error (or `--help`), as clap reports it.
    Clap(clap::Error),
    /// The configuration file is unreadable, not TOML, or names an unknown key.
    Config(String),
}

/// [`parse_node_args`] on a given command line (for tests).
pub fn parse_from(argv: Vec<OsString>) -> Result<Parsed, Failure> {
    let command = NodeArgs::command();
    let first = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(Failure::Clap)?;
    let mut from_file = BTreeMap::new();
    let mut argv = argv;
    let path = first
        .get_one::<std::path::PathBuf>("config")
        .filter(|_| first.subcommand().is_none());
    if let Some(path) = path {
        let extra = file_arguments(&command, &first, path, &mut from_file)?;
        argv.extend(extra);
    }
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(Failure::Clap)?;
    if matches.get_flag("print_config") {
        print_config(&command, &matches, &from_file);
        return Ok(Parsed::Printed);
    }
    let args = NodeArgs::from_arg_matches(&matches).map_err(Failure::Clap)?;
    Ok(Parsed::Args(Box::new(args)))
}

/// The flags the file adds: one per key whose setting the command line and environment left
/// at its default. Records each such setting's id in `from_file`.
fn file_arguments(
    command: &clap::Command,
    first: &ArgMatches,
    path: &Path,
    from_file: &mut BTreeMap<String, ()>,
) -> Result<Vec<OsString>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Failure::Config(format!("cannot read --config {}: {error}", path.display()))
    })?;
    let table: toml::Table = text.parse().map_err(|error: toml::de::Error| {
        Failure::Config(format!("--config {}: {error}", path.display()))
    })?;
    let line_of = |key: &str| {
        text.lines()
            .position(|line| {
                let line = line.trim_start();
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map_or(0, |index| index + 1)
    };
    let mut extra = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()) && !is_meta(arg.get_id().as_str()))
        else {
            let known: Vec<String> = command
                .get_arguments()
                .filter(|arg| !is_meta(arg.get_id().as_str()))
                .filter_map(|arg| arg.get_long().map(str::to_string))
                .collect();
            return Err(Failure::Config(format!(
                "--config {}: unknown key `{key}` at line {}; the keys are the flags' long \
                 names: {}",
                path.display(),
                line_of(key),
                known.join(", ")
            )));
        };
        let id = arg.get_id().as_str().to_string();
        let given_elsewhere = matches!(
            first.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given_elsewhere {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let rendered = render(value).map_err(|reason| {
            Failure::Config(format!(
                "--config {}: `{key}` at line {}: {reason}",
                path.display(),
                line_of(key)
            ))
        })?;
        if takes_value {
            extra.push(OsString::from(format!("--{long}={rendered}")));
        } else {
            match value {
                toml::Value::Boolean(true) => extra.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                _ => {
                    return Err(Failure::Config(format!(
                        "--config {}: `{key}` at line {} is a switch: give true or false",
                        path.display(),
                        line_of(key)
                    )))
                }
            }
        }
        from_file.insert(id, ());
    }
    Ok(extra)
}

/// Settings that are not node configuration: the file itself, and the printing of it.
fn is_meta(id: &str) -> bool {
    matches!(id, "config" | "print_config" | "help" | "version")
}

/// A TOML value as the flag text clap parses.
fn render(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(render)
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        other => Err(format!("a {} is not a flag value", other.type_str())),
    }
}

/// Prints every setting, its effective value and its source, as TOML a `--config` file takes.
fn print_config(command: &clap::Command, matches: &ArgMatches, from_file: &BTreeMap<String, ()>) {
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if is_meta(id) {
            continue;
        }
        let Some(long) = arg.get_long() else {
            continue;
        };
        let source = if from_file.contains_key(id) {
            Source::File
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Environment,
                _ => Source::Default,
            }
        };
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| {
                raw.map(|value| value.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let shown = if !arg.get_action().takes_values() {
            matches.get_flag(id).to_string()
        } else if values.is_empty() {
            "# (not set)".to_string()
        } else if values.len() == 1 {
            as_toml(&values[0]).to_string()
        } else {
            toml::Value::Array(values.iter().map(|value| as_toml(value)).collect()).to_string()
        };
        if shown.starts_with('#') {
            println!("# {long} = (not set)  # {}", source.name());
        } else {
            println!("{long} = {shown}  # {}", source.name());
        }
    }
}

/// A flag's text as the TOML value that gives it back: a number or boolean bare, else a
/// string.
fn as_toml(text: &str) -> toml::Value {
    if let Ok(number) = text.parse::<i64>() {
        toml::Value::Integer(number)
    } else if let Ok(flag) = text.parse::<bool>() {
        toml::Value::Boolean(flag)
    } else {
        toml::Value::String(text.to_string())
    }
}
