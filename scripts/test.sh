#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian machine: installs redis-server when it is missing,
# then formatting, lints, the docs, and the whole test suite (which spawns its own Redis servers).
#
#   ./scripts/test.sh
#
# Set REDIS_URL to test against a server you run yourself instead of spawned ones.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${REDIS_URL:-}" ] && [ -z "${REDIS_SERVER_BIN:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  echo "==> redis-server not found: installing Debian's redis-server"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (every package, every target)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --all-features -- -D warnings

echo "==> each feature on its own"
for features in "" "memory" "redis"; do
  cargo clippy -q --lib --no-default-features --features "$features" -- -D warnings
done

echo "==> cargo package"
cargo package -q --allow-dirty --no-verify

echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

echo "==> cargo test --all-features"
cargo test --all-features
