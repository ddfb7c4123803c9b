//! Replays the committed fuzz corpus (`fuzz/corpus/uppercase/`) through the
//! same checks as the fuzz target, so `cargo test` on stable exercises every
//! input the fuzzer found interesting without needing cargo-fuzz or nightly.
//!
//! The decoding and the assertions are not copied here: they live in
//! `fuzz/fuzz_targets/decode.rs`, compiled into both the fuzz target and
//! this test, so a corpus file is always split and checked exactly as it was
//! when the fuzzer saved it (see that file for the input format).

use std::fs;
use std::panic;
use std::path::Path;

#[path = "../../fuzz/fuzz_targets/decode.rs"]
mod decode;

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/uppercase");
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the fuzz corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} is empty: the replay would test nothing",
        dir.display()
    );

    let mut failures = Vec::new();
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if let Err(payload) = panic::catch_unwind(|| decode::check(&data)) {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
