//! cargo-fuzz target `kv_command`: see [`keyval_fuzz::kv_command`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::kv_command(data));
