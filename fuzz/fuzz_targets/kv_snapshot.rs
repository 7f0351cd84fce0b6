//! cargo-fuzz target `kv_snapshot`: see [`keyval_fuzz::kv_snapshot`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::kv_snapshot(data));
