//! `keyval`: one node of a keyval cluster. See `keyval --help` and docs/operations.md.
//! With no flags it runs a single-node store on 127.0.0.1:7379 with data in ./keyval-data.

use clap::Parser;

fn main() {
    let args = keyval::cli::node::NodeArgs::parse();
    if let Err(error) = keyval::cli::node::run(args) {
        eprintln!("keyval: error: {error:#}");
        std::process::exit(1);
    }
}
