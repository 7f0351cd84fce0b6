//! cargo-fuzz target `codec_record`: see [`keyval_fuzz::codec_record`] and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keyval_fuzz::codec_record(data));
