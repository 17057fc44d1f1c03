#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian machine: installs redis-server and PostgreSQL when
# they are missing (elsewhere, or without root or sudo, it says what to install and stops), then
# formatting, lints, the docs, and the whole test suite (which spawns its own Redis servers,
# Redis clusters and PostgreSQL clusters).
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

# When this script cannot install what is missing: say what, and how to use servers of one's
# own instead, and stop before minutes of building end in failing tests.
cannot_install() {
  {
    echo "scripts/test.sh: cannot install what the tests need: $1."
    echo "Install it with your system's package manager:"
    for package in "${need[@]}"; do
      case $package in
        redis-server) echo "  - redis-server and redis-cli (Debian's redis-server package)" ;;
        postgresql)
          echo "  - a PostgreSQL server with initdb and pg_ctl (Debian's postgresql package);"
          echo "    where they are not under /usr/lib/postgresql/*/bin, set PG_BIN to their directory,"
          echo "    e.g. PG_BIN=\"\$(dirname \"\$(command -v initdb)\")\"" ;;
      esac
    done
    cat <<'EOF'
Or point the tests at servers you run:
  REDIS_URL=redis://127.0.0.1:6379   a Redis (the tests that stop, fill or count a server
                                     still start their own redis-server; REDIS_SERVER_BIN
                                     names the binary)
  REDIS_CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001,...   a Redis Cluster
  DATABASE_URL=postgres://postgres@127.0.0.1/postgres                    a PostgreSQL database
Then run ./scripts/test.sh again.
EOF
  } >&2
  exit 1
}

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    cannot_install "there is no apt-get (not Debian or Ubuntu)"
  fi
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    cannot_install "not root, and there is no sudo"
  fi
  echo "==> installing Debian's ${need[*]}"
  { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null; } ||
    cannot_install "apt-get failed (its error is above)"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (every package, every target)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --all-targets --all-features -- -D warnings

echo "==> each feature on its own (clippy and docs)"
for features in "" "memory" "redis" "redis-cluster" "postgres" "json" "conformance" "client" "reqwest"; do
  echo "  features=${features:-(none)}: clippy, doc"
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

echo "==> the protocol model (stateright, exhaustive to the depths in model/README.md)"
cargo test -p protocol-model

echo "==> MemoryStore and the waiters' wake-ups under shuttle (--cfg shuttle, its own target dir)"
RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/shuttle" \
  cargo test --features memory --test shuttle
