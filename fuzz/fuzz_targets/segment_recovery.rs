//! cargo-fuzz target `segment_recovery`: see [`keyval_fuzz::segment_recovery`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::segment_recovery(data));
