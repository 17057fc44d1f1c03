#!/usr/bin/env bash
# Fuzzes key parsing and record decoding with cargo-fuzz (libFuzzer), installing cargo-fuzz when
# it is missing. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
#
#   ./scripts/fuzz.sh                 # both targets, 10 minutes each, one after the other
#   ./scripts/fuzz.sh record_decode 60
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
seconds="${2:-600}"
targets=("${1:-key_parse}")
[ $# -eq 0 ] && targets=(key_parse record_decode)
for target in "${targets[@]}"; do
  echo "==> fuzzing $target for ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$seconds"
done
