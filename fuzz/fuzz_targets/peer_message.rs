//! cargo-fuzz target `peer_message`: see [`keyval_fuzz::peer_message`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::peer_message(data));
