//! `kvctl`: read, write, inspect and benchmark a keyval cluster. See `kvctl --help`.
//! Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 cas failed, 5 indeterminate.

use clap::Parser;

fn main() {
    let args = keyval::cli::kvctl::KvctlArgs::parse();
    // Results go to stdout and errors to stderr as kvctl prints them; the library's own
    // events (a warning from a transport, say) come through here, warnings and worse only.
    keyval::cli::logging::install(
        keyval::log::Level::Warn,
        keyval::cli::logging::LogFormat::Text,
        None,
    );
    std::process::exit(keyval::cli::kvctl::run(args));
}
