//! `kvctl`: read, write, inspect and benchmark a keyval cluster. See `kvctl --help`.
//! Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 cas failed, 5 indeterminate.

use clap::Parser;

fn main() {
    let args = keyval::cli::kvctl::KvctlArgs::parse();
    std::process::exit(keyval::cli::kvctl::run(args));
}
