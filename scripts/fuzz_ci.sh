#!/usr/bin/env bash
# Bounded fuzzing of the uppercase transform, for CI or a quick local check.
#
#   scripts/fuzz_ci.sh            # 30 s
#   FUZZ_SECONDS=600 scripts/fuzz_ci.sh
#
# Builds fuzz/fuzz_targets/uppercase.rs with cargo-fuzz and runs it for
# FUZZ_SECONDS (default 30) on top of the committed corpus. cargo-fuzz needs
# nightly compiler flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks
# them (set here). New corpus entries go to a scratch directory, so the
# committed corpus (fuzz/corpus/uppercase) is only read; crashes are written
# to fuzz/artifacts/uppercase/ and make this script fail.
#
# If cargo-fuzz is not installed (or cannot build here), the script says so
# and exits 0: the committed corpus is replayed by `cargo test` anyway
# (tests/it/fuzz_replay.rs), so CI keeps that coverage without fuzzing.
#
# Environment:
#   FUZZ_SECONDS      run time in seconds (default 30)
#   FUZZ_SANITIZER    cargo fuzz --sanitizer (default: address; "none" if ASan
#                     does not work on this machine)
#   FUZZ_MAX_LEN      libFuzzer -max_len (default 2048)
#   CARGO_TARGET_DIR  honoured (passed as --target-dir)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
max_len="${FUZZ_MAX_LEN:-2048}"
target=uppercase

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "fuzz_ci: FUZZ_SECONDS must be a positive integer, got '$seconds'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz_ci: cargo-fuzz is not installed; skipping fuzzing."
    echo "fuzz_ci: (install it with 'cargo install cargo-fuzz'; the committed corpus is still replayed by 'cargo test')"
    exit 0
fi

export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes -Z flags; lets a stable rustc accept them
target_dir=()
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    target_dir=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi

echo "fuzz_ci: building fuzz target '$target' ($(cargo fuzz --version), sanitizer $sanitizer)"
if ! cargo fuzz build "$target" -s "$sanitizer" "${target_dir[@]}"; then
    echo "fuzz_ci: cargo fuzz could not build the target on this toolchain; skipping fuzzing." >&2
    echo "fuzz_ci: (try FUZZ_SANITIZER=none; the committed corpus is still replayed by 'cargo test')" >&2
    exit 0
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/fuzz_ci.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "fuzz/artifacts/$target"

echo "fuzz_ci: fuzzing for ${seconds}s (new inputs go to $scratch; committed corpus read-only)"
status=0
# The first corpus directory receives new inputs; the second is only read.
cargo fuzz run "$target" -s "$sanitizer" "${target_dir[@]}" \
    "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 || status=$?

if [ "$status" -ne 0 ]; then
    echo "fuzz_ci: the fuzzer FAILED (exit $status); reproducers in fuzz/artifacts/$target/:" >&2
    ls -l "fuzz/artifacts/$target/" >&2 || true
    echo "fuzz_ci: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $target -s $sanitizer fuzz/artifacts/$target/<file>" >&2
    exit 1
fi
echo "fuzz_ci: no failures in ${seconds}s"
