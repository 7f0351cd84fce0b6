//! cargo-fuzz target `tcp_handshake`: see [`keyval_fuzz::tcp_handshake`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::tcp_handshake(data));
