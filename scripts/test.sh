#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian machine: installs redis-server and PostgreSQL when
# they are missing, then formatting, lints, the docs, and the whole test suite (which spawns its
# own Redis servers, Redis clusters and PostgreSQL clusters).
#
#   ./scripts/test.sh
#
# Set REDIS_URL (or REDIS_CLUSTER_URLS, DATABASE_URL) to test against servers you run yourself
# instead of spawned ones.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if [ -z "${REDIS_URL:-}" ] && [ -z "${REDIS_SERVER_BIN:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
  need+=(redis-server)
fi
if [ -z "${DATABASE_URL:-}" ] && [ -z "${PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing Debian's ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (every package, every target)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --all-features -- -D warnings

echo "==> each feature on its own (clippy and docs)"
for features in "" "memory" "redis" "redis-cluster" "postgres" "json" "conformance" "client" "reqwest"; do
  cargo clippy -q --lib --no-default-features --features "$features" -- -D warnings
  RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps --no-default-features --features "$features"
done

echo "==> MSRV and licenses of the dependencies; no module import circles"
python3 scripts/check_deps.py
python3 scripts/check_cycles.py

echo "==> cargo package"
cargo package -q --allow-dirty --no-verify

echo "==> cargo doc (as on stable, and as docs.rs builds it: --cfg docsrs marks feature-gated items)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo doc --no-deps --all-features

echo "==> cargo test --all-features"
cargo test --all-features
