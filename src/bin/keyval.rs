//! `keyval`: one node of a keyval cluster. See `keyval --help` and docs/operations.md.
//! With no flags it runs a single-node store on 127.0.0.1:7379 with data in ./keyval-data.

fn main() {
    // Flags, KEYVAL_* variables, then --config FILE, then the defaults.
    let args = keyval::cli::config_file::parse_node_args();
    if let Err(error) = keyval::cli::node::run(args) {
        eprintln!("keyval: error: {error:#}");
        std::process::exit(1);
    }
}
