#!/usr/bin/env bash
# The end-to-end load comparison: one axum handler behind each idempotency variant, driven by
# wrk on loopback at a fixed concurrency, all in one run, reported as requests/s, p50, p99, the
# CPU time the server, Redis and PostgreSQL spend per request (from /proc), and ratios. Installs
# wrk and redis-server (Debian packages) when missing.
#
# On a shared machine one measurement per variant is noise: the run goes through every variant
# ROUNDS times, in turn, and reports each variant's median round; each ratio is the median of
# the ratios within a round (numerator and denominator measured minutes apart at most).
#
#   ./scripts/load.sh                         # 5 rounds of 10 s per variant, 64 connections
#   ROUNDS=1 DURATION=20 CONNECTIONS=128 ./scripts/load.sh
#   VARIANTS="b1 c b2 d" ./scripts/load.sh    # only these variants (a full run takes a while)
#   VARIANTS="p1 p tf p2 q d t" ./scripts/load.sh   # the PostgreSQL and tiered comparison
#   BASELINE=dc26008 ./scripts/load.sh        # adds c0, d0, p0, q0: (c), (d), (p), (q) built at that revision
#   DELAY_US=250 CONNECTIONS=1 ./scripts/load.sh   # the store 0.5 ms of round trip away
#
# VARIANTS picks variants by name; they still run in the script's order, so the two sides of a
# ratio stay back to back, and ratios whose sides were not both run are left out of the report.
# BASELINE answers "did this change slow the layer down?" within one run: comparing with the
# README's figures mixes in the machine's run-to-run noise, which is as large as the effects
# worth catching. It builds load_server at that revision (a git worktree and its own
# CARGO_TARGET_DIR, both under target/load-baseline/, so the main build is untouched; the
# worktree is removed at exit, the build is kept for the next run) and runs c0 next to c, d0
# next to d, p0 next to p and q0 next to q in every round, after them in odd rounds and before them in even ones (so that
# whatever favours the first or the second of two runs cannot pass for a difference between the
# revisions); the report adds the ratios (c)/(c0), (d)/(d0), (p)/(p0) and (q)/(q0).
#
# ca (RedisStore waiting for a replica's acknowledgement) starts a replica of the script's Redis;
# with DELAY_US, the replica reaches its primary through the delay line too.
#
# PostgreSQL (the p*, q and t* variants): with DATABASE_URL unset, the script starts its own
# cluster (initdb -A trust into a temporary directory, as the `postgres` user when run as root,
# since initdb refuses root; newest /usr/lib/postgresql/*/bin or $PG_BIN), on 127.0.0.1 and a
# free port, with fsync=off (the report says so), and stops and removes it at exit. With
# DATABASE_URL set, that server is used instead (a scratch database: its idempotency_records
# table is emptied before every variant) and its CPU time is not measured. Redis and PostgreSQL
# are started only when a selected variant uses them. PG_TEST_BEFORE_ACQUIRE=false gives every
# PostgreSQL variant's pool sqlx's test_before_acquire(false): no check (one round trip) each
# time a statement takes a connection.
#
# DELAY_US puts the store across a network: the servers reach Redis and PostgreSQL through
# delay_proxy (benches/src/bin/delay_proxy.rs, one process for both, so that its spin takes one
# core at most), which delays every chunk DELAY_US microseconds each way: a round trip gains
# 2 x DELAY_US. DELAY_US=0 routes through the proxy without a delay (its own cost). Unset: no
# proxy, loopback. The script's own commands (emptying Redis and the table) go direct.
#
# load_server is built into $CARGO_TARGET_DIR when set, else target/.
# The report is printed and written to target/load/report.md; raw wrk output sits beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
out=target/load
mkdir -p "$out"

baseline="${BASELINE:-}"
baseline_bin=""
worktree=""
[ -z "$baseline" ] || baseline=$(git rev-parse --short "$baseline^{commit}")

# name | server variant | wrk script | what it is
# Run in this order: each target ratio's two variants run back to back (a then l, b1 then c,
# b2 then d, d then t, p1 then p then tf, p2 then q), so both see the same minute of a shared
# machine.
# With BASELINE, c0 and d0 (the baseline binary: a name ending in 0) follow c and d, so that c
# sits next to both b1 and c0, and d next to both b2 and d0 (in every other round they come
# just before them); t then follows d0, so it is next to d only in even rounds. p0 and q0
# follow p and q the same way.
all_variants=(
  "a|bare|fresh|no idempotency"
  "l|ours-cached|replay|tower-idempotency, ReplayCache<RedisStore>, replays"
  "b1|manual-first|fresh|handler makes 2 EVALSHA by hand"
  "c|ours-redis|fresh|tower-idempotency, RedisStore, first executions"
  "c0|ours-redis|fresh|tower-idempotency at $baseline, RedisStore, first executions"
  "ca|ours-redis-acks|fresh|tower-idempotency, RedisStore with_replica_acks(1), first executions"
  "b4|manual-textbook|fresh|the textbook design by hand: GET, SET NX lock, SET result, release script"
  "b2|manual-replay|replay|handler makes 1 EVALSHA by hand"
  "d|ours-redis|replay|tower-idempotency, RedisStore, replays"
  "d0|ours-redis|replay|tower-idempotency at $baseline, RedisStore, replays"
  "t|ours-tiered|replay|tower-idempotency, TieredStore<RedisStore, PostgresStore>, replays"
  "p1|manual-pg-first|fresh|handler makes PostgresStore's 2 statements by hand"
  "p|ours-postgres|fresh|tower-idempotency, PostgresStore, first executions"
  "p0|ours-postgres|fresh|tower-idempotency at $baseline, PostgresStore, first executions"
  "tf|ours-tiered|fresh|tower-idempotency, TieredStore<RedisStore, PostgresStore>, first executions"
  "p2|manual-pg-replay|replay|handler makes PostgresStore's begin statement by hand"
  "q|ours-postgres|replay|tower-idempotency, PostgresStore, replays"
  "q0|ours-postgres|replay|tower-idempotency at $baseline, PostgresStore, replays"
  "e|ours-memory|fresh|tower-idempotency, MemoryStore, first executions"
  "f|axum-idempotent|fresh|axum-idempotent 0.6, in-memory sessions (MokaStore), first executions"
  "f2|axum-idempotent|replay|axum-idempotent 0.6, in-memory sessions (MokaStore), replays"
)
known=" "
for entry in "${all_variants[@]}"; do
  name=${entry%%|*}
  [[ "$name" == *0 ]] || known="$known$name "
done
wanted=" ${VARIANTS:-$known} "
for name in $wanted; do
  [[ "$known" == *" $name "* ]] || { echo "unknown variant $name; known:$known(c0, d0, p0 and q0 come with BASELINE)" >&2; exit 1; }
done
variants=()
for entry in "${all_variants[@]}"; do
  name=${entry%%|*}
  # c0, d0, p0 and q0 run with c, d, p and q, and only with a baseline.
  case "$name" in *0) [ -n "$baseline" ] || continue; name=${name%0} ;; esac
  if [[ "$wanted" == *" $name "* ]]; then variants+=("$entry"); fi
done

# Which servers the selected variants need.
use_redis=""; use_pg=""; use_replica=""
for entry in "${variants[@]}"; do
  IFS='|' read -r _ variant _ _ <<<"$entry"
  case "$variant" in
    manual-first | manual-replay | manual-textbook | ours-redis | ours-cached) use_redis=1 ;;
    ours-redis-acks) use_redis=1; use_replica=1 ;;
    manual-pg-* | ours-postgres) use_pg=1 ;;
    ours-tiered) use_redis=1; use_pg=1 ;;
  esac
done

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ -z "$use_redis" ] || command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p benches --bin load_server --bin delay_proxy
server_bin="${CARGO_TARGET_DIR:-target}/release/load_server"
proxy_bin="${CARGO_TARGET_DIR:-target}/release/delay_proxy"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# PostgreSQL's CPU time: the postmaster's own and its reaped children's (cutime, cstime: every
# backend that has exited), plus every live child's (backends, autovacuum, checkpointer,
# walwriter...). A backend that exits during a run moves from the second sum to the first.
pg_ticks() {
  local children total ticks child
  children=$(ps -o pid= --ppid "$pg_pid" || true)
  total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pg_pid/stat")
  for child in $children; do
    ticks=$(awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || true)
    total=$((total + ${ticks:-0}))
  done
  echo "$total"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_pid=""; redis_dir=""; redis_port=""; replica_pid=""
pg_pid=""; pg_dir=""; pg_bin=""; pg_note=""
as_pg=()
server_pid=""
proxy_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  # Redis writes its log until it is gone: wait for it, or the directory may not be empty yet.
  if [ -n "$replica_pid" ]; then kill "$replica_pid" 2>/dev/null && wait "$replica_pid" 2>/dev/null || true; fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true; fi
  [ -z "$redis_dir" ] || rm -rf "$redis_dir" || true
  if [ -n "$pg_dir" ]; then
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir" || true
  fi
  [ -z "$worktree" ] || git worktree remove --force "$worktree" 2>/dev/null || true
}
trap cleanup EXIT
if [ -n "$use_redis" ]; then
  redis_port=$(free_port)
  redis_dir=$(mktemp -d)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
    --logfile "$redis_dir/redis.log" &
  redis_pid=$!
fi
if [ -n "$use_pg" ]; then
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_note="PostgreSQL at DATABASE_URL (its CPU time is not measured)"
  else
    pg_bin="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
    [ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL: install it (apt-get install -y postgresql), set PG_BIN, or set DATABASE_URL" >&2; exit 1; }
    pg_dir=$(mktemp -d)
    # initdb refuses to run as root: the cluster belongs to the `postgres` user then.
    if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$pg_dir"; as_pg=(runuser -u postgres --); fi
    "${as_pg[@]}" "$pg_bin/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$pg_dir/data" >/dev/null
    pg_port=$(free_port)
    # TCP on loopback, as Redis; the unix socket goes in the temporary directory.
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 60 \
      -o "-k $pg_dir -p $pg_port -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    pg_pid=$(head -n1 "$pg_dir/data/postmaster.pid")
    export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
    pg_note="PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}'): started by the script, \
defaults but fsync=off (commits are not flushed to disk, so the figures leave out disk flushes), \
TCP on loopback"
  fi
  if [ "${PG_TEST_BEFORE_ACQUIRE:-}" = false ]; then
    pool_check="with PG_TEST_BEFORE_ACQUIRE=false: not checked when taken from the pool"
  else
    pool_check="each checked with a round trip when taken from the pool"
  fi
  pg_note="$pg_note. Every PostgreSQL variant's pool is sqlx's default (\`PgPool::connect\`: at most \
10 connections, $pool_check)."
  psql_bin=psql
  [ -z "$pg_bin" ] || psql_bin="$pg_bin/psql"
  pg_sql() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@" >/dev/null; }
  # The shipped migrations, so that the table exists (to be emptied) before any server runs.
  for migration in migrations/*.sql; do pg_sql -f "$migration"; done
fi
if [ -n "$baseline" ]; then
  worktree="$PWD/target/load-baseline/src-$baseline"
  baseline_target="$PWD/target/load-baseline/target"
  # A worktree left by a run that was killed before its cleanup would make `worktree add` fail.
  git worktree remove --force "$worktree" 2>/dev/null || true
  git worktree prune
  git worktree add --detach --quiet "$worktree" "$baseline"
  # Same profile as the main build; its own target directory, kept between runs.
  (cd "$worktree" && CARGO_TARGET_DIR="$baseline_target" cargo build --release -q -p benches --bin load_server)
  baseline_bin="$baseline_target/release/load_server"
fi
if [ -n "$use_redis" ]; then
  export REDIS_URL="redis://127.0.0.1:$redis_port"
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
fi
# The servers' URLs: direct, or through the delay line.
server_redis_url="${REDIS_URL:-}"; server_database_url="${DATABASE_URL:-}"; delay_note=""
if [ -n "${DELAY_US+set}" ]; then
  routes=()
  if [ -n "$use_redis" ]; then
    redis_proxy_port=$(free_port)
    routes+=("127.0.0.1:$redis_proxy_port" "127.0.0.1:$redis_port")
    server_redis_url="redis://127.0.0.1:$redis_proxy_port"
  fi
  if [ -n "$use_replica" ]; then
    replication_proxy_port=$(free_port)
    routes+=("127.0.0.1:$replication_proxy_port" "127.0.0.1:$redis_port")
  fi
  if [ -n "$use_pg" ]; then
    pg_proxy_port=$(free_port)
    pg_upstream=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(f"{p.hostname}:{p.port or 5432}")' "$DATABASE_URL")
    routes+=("127.0.0.1:$pg_proxy_port" "$pg_upstream")
    server_database_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(netloc=p.netloc.rsplit("@", 1)[0] + "@127.0.0.1:" + sys.argv[2] if "@" in p.netloc else "127.0.0.1:" + sys.argv[2]).geturl())' "$DATABASE_URL" "$pg_proxy_port")
  fi
  if [ ${#routes[@]} -gt 0 ]; then
    "$proxy_bin" "${routes[0]}" "${routes[1]}" "$DELAY_US" "${routes[@]:2}" >/dev/null &
    proxy_pid=$!
    if [ -n "$use_redis" ]; then
      until redis-cli -p "$redis_proxy_port" ping >/dev/null 2>&1; do sleep 0.1; done
    fi
    if [ -n "$use_pg" ]; then
      until pg_sql -d "$server_database_url" -c "SELECT 1" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  if [ -n "$use_replica" ]; then
    replica_primary_port=$replication_proxy_port
    delay_note_replica=" The replica reaches its primary through it too."
  fi
  delay_note="The servers reach Redis and PostgreSQL through delay_proxy, $DELAY_US us each way: \
$(awk -v d="$DELAY_US" 'BEGIN { printf "%g", 2 * d / 1000 }') ms added to every round trip (the script's own commands go direct).${delay_note_replica:-}"
fi
if [ -n "$use_replica" ]; then
  replica_port=$(free_port)
  mkdir "$redis_dir/replica"
  redis-server --port "$replica_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$redis_dir/replica" --logfile "$redis_dir/replica/redis.log" \
    --replicaof 127.0.0.1 "${replica_primary_port:-$redis_port}" &
  replica_pid=$!
  # The first sync waits for repl-diskless-sync-delay (5 s).
  deadline=$((SECONDS + 60))
  until redis-cli -p "$replica_port" info replication 2>/dev/null | grep -q "master_link_status:up"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "the replica did not sync within 60 s: $redis_dir/replica/redis.log" >&2; exit 1; }
    sleep 0.1
  done
fi

for round in $(seq 1 "$ROUNDS"); do
  order=("${variants[@]}")
  # Every other round, each baseline variant runs before its counterpart instead of after, so
  # that neither side of (c)/(c0), (d)/(d0), (p)/(p0) and (q)/(q0) always runs second.
  if [ $((round % 2)) -eq 0 ]; then
    for i in "${!order[@]}"; do
      if [ "$i" -gt 0 ] && [[ "${order[$i]}" == "${order[$((i - 1))]%%|*}0|"* ]]; then
        entry=${order[$i]}; order[$i]=${order[$((i - 1))]}; order[$((i - 1))]=$entry
      fi
    done
  fi
  for entry in "${order[@]}"; do
    IFS='|' read -r name variant script what <<<"$entry"
    [ -z "$use_redis" ] || redis-cli -p "$redis_port" flushall >/dev/null
    # Every variant starts from an empty table (and no checkpoint owed to the one before).
    [ -z "$use_pg" ] || pg_sql -c "TRUNCATE idempotency_records"
    [ -z "$pg_dir" ] || pg_sql -c "CHECKPOINT"
    port=$(free_port)
    bin=$server_bin
    case "$name" in *0) bin=$baseline_bin ;; esac
    REDIS_URL="$server_redis_url" DATABASE_URL="$server_database_url" "$bin" "$variant" "127.0.0.1:$port" &
    server_pid=$!
    until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.1; done
    cookie=""
    if [ "$variant" = axum-idempotent ]; then
      cookie=$(curl -s -i -X POST "http://127.0.0.1:$port/login" | tr -d '\r' \
        | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -n1)
    fi
    if [ "$script" = replay ]; then
      # The first request runs the handler; the measured ones replay it.
      curl -s -o /dev/null -X POST "http://127.0.0.1:$port/orders" -H 'content-type: application/json' \
        -H 'idempotency-key: replayed-key' ${cookie:+-H "cookie: $cookie"} \
        -d '{"customer_id":"C001","amount":1200}'
    fi
    echo "==> round $round, $name: $what"
    # CPU time (user + system, in clock ticks) the server, Redis and PostgreSQL spend during
    # the run ("-" for a server this run did not start).
    server_ticks=$(cpu_ticks "$server_pid")
    redis_ticks=-; [ -z "$redis_pid" ] || redis_ticks=$(cpu_ticks "$redis_pid")
    pg_ticks_before=-; [ -z "$pg_pid" ] || pg_ticks_before=$(pg_ticks)
    # LOAD_COOKIE only when there is a cookie (axum-idempotent's session): the other variants'
    # requests carry no Cookie header at all, as their clients would send them (an empty one
    # once made every replay a 422 when empty credentials counted).
    if [ -n "$cookie" ]; then export LOAD_COOKIE="$cookie"; else unset LOAD_COOKIE; fi
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "scripts/load/$script.lua" \
      "http://127.0.0.1:$port/orders" >"$out/$name.$round.txt"
    redis_spent=-; [ -z "$redis_pid" ] || redis_spent=$(( $(cpu_ticks "$redis_pid") - redis_ticks ))
    pg_spent=-; [ -z "$pg_pid" ] || pg_spent=$(( $(pg_ticks) - pg_ticks_before ))
    echo "cpu ticks: server $(( $(cpu_ticks "$server_pid") - server_ticks )) redis $redis_spent" \
      "postgres $pg_spent per $(getconf CLK_TCK)" >>"$out/$name.$round.txt"
    grep -E "Requests/sec|Non-2xx" "$out/$name.$round.txt" || true
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    server_pid=""
  done
done

python3 - "$out" "$DURATION" "$CONNECTIONS" "$ROUNDS" "$baseline" "$pg_note" "$delay_note" "${variants[@]}" <<'PY' | tee "$out/report.md"
import re, sys, platform, os, statistics
out, duration, connections, rounds, baseline = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
pg_note, delay_note = sys.argv[6], sys.argv[7]
entries = sys.argv[8:]
def micros(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
def measure(name, round):
    raw = open(f"{out}/{name}.{round}.txt").read()
    # Anchored: the thread stats line can hold "...50%" too.
    p50 = micros(re.search(r"^\s+50%\s+(\S+)", raw, re.M).group(1))
    p99 = micros(re.search(r"^\s+99%\s+(\S+)", raw, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", raw)
    ticks = re.search(r"cpu ticks: server (\d+) redis (-|\d+)(?: postgres (-|\d+))? per (\d+)", raw)
    server, redis, postgres, hz = ticks.groups()
    requests = int(re.search(r"(\d+) requests in", raw).group(1))
    # None: the server was not running (or, for PostgreSQL, not measured).
    per_request = lambda t: None if t in (None, "-") else int(t) / int(hz) / requests * 1e6
    return dict(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", raw).group(1)), p50=p50, p99=p99,
                server=per_request(server), redis=per_request(redis), postgres=per_request(postgres),
                bad=int(bad.group(1)) if bad else 0)
runs = {}
rows = []
for entry in entries:
    name, variant, script, what = entry.split("|")
    runs[name] = [measure(name, r) for r in range(1, rounds + 1)]
    median = sorted(runs[name], key=lambda m: m["rps"])[(rounds - 1) // 2]
    rows.append((name, what, median, min(m["rps"] for m in runs[name]), max(m["rps"] for m in runs[name])))
# Shown in the order of the letters, whatever order they ran in.
display = ["a", "b1", "b2", "b4", "c", "ca", "c0", "d", "d0", "e", "l", "f", "f2", "p1", "p2", "p", "p0", "q", "q0", "tf", "t"]
rows.sort(key=lambda row: display.index(row[0]) if row[0] in display else len(display))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Load comparison: wrk, 1 thread, {connections} connections, {rounds} rounds of {duration} s per "
      f"variant, loopback; {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}.\n")
if delay_note:
    print(delay_note + "\n")
print("axum-idempotent runs on ruts' in-memory MokaStore: ruts' Redis store needs HEXPIRE "
      "(Redis 7.4+) and Debian 12 ships Redis 7.0.\n")
if pg_note:
    print(pg_note + "\n")
print("Each row is the variant's median round; the range is over all rounds.\n")
if baseline:
    print(f"c0, d0, p0 and q0 are c, d, p and q with load_server built at {baseline}, each run next to its "
          "counterpart in every round (after it in odd rounds, before it in even ones).\n")
cpu_text = lambda us: "-" if us is None else f"{us:.1f} us"
print("| variant | what | requests/s | range | p50 | p99 | server CPU / request | Redis CPU / request "
      "| PostgreSQL CPU / request | non-2xx |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, what, m, low, high in rows:
    print(f"| {name} | {what} | {m['rps']:,.0f} | {low:,.0f}-{high:,.0f} | {m['p50']:,.0f} us "
          f"| {m['p99']:,.0f} us | {cpu_text(m['server'])} | {cpu_text(m['redis'])} "
          f"| {cpu_text(m['postgres'])} | {m['bad']} |")
print()

def print_ratio(label, num, den, target, metric):
    """One line: the median over rounds of num's metric over den's, each round's beside it."""
    ratios = [n[metric] / d[metric] for n, d in zip(runs[num], runs[den])]
    rounds_text = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"- {label}: **{statistics.median(ratios):.2f}** (rounds: {rounds_text})"
          + (f"; target {target}" if target else ""))

for label, num, den, target in [
    ("(c)/(b1) first execution vs hand-made round trips", "c", "b1", ">= 0.8"),
    ("(ca)/(c) first execution waiting for a replica vs without", "ca", "c", ""),
    ("(c)/(b4) first execution vs the textbook design by hand", "c", "b4",
     ">= 1.6 at 64 connections and 0.5 ms round trip"),
    ("(d)/(b2) replay vs hand-made round trip", "d", "b2", ">= 0.9"),
    ("(l)/(a) replay through the local tier vs no idempotency", "l", "a", ">= 0.8"),
    ("(e)/(a) MemoryStore first execution vs no idempotency", "e", "a", ""),
    ("(c)/(f) Redis vs axum-idempotent in memory, first executions", "c", "f", "> 1"),
    ("(e)/(f) both in memory, first executions", "e", "f", ""),
    ("(d)/(f2) Redis vs axum-idempotent in memory, replays", "d", "f2", ""),
    ("(l)/(f2) local tier vs axum-idempotent in memory, replays", "l", "f2", ""),
    (f"(c)/(c0) first execution vs itself at {baseline}", "c", "c0", ""),
    (f"(d)/(d0) replay vs itself at {baseline}", "d", "d0", ""),
    ("(p)/(p1) PostgreSQL first execution vs the store's statements by hand", "p", "p1", ">= 0.8"),
    ("(q)/(p2) PostgreSQL replay vs the store's begin statement by hand", "q", "p2", ">= 0.9"),
    (f"(p)/(p0) PostgreSQL first execution vs itself at {baseline}", "p", "p0", ""),
    (f"(q)/(q0) PostgreSQL replay vs itself at {baseline}", "q", "q0", ""),
    ("(t)/(d) tiered replay (Redis in front of PostgreSQL) vs RedisStore replay", "t", "d", ">= 0.9"),
    ("(tf)/(p) tiered first execution vs PostgresStore first execution", "tf", "p", ">= 0.8"),
]:
    if num not in runs or den not in runs:
        continue
    print_ratio(label, num, den, target, "rps")
# Latency: what one connection (CONNECTIONS=1) is about. Lower is better here.
p50_pairs = [
    ("(c)/(b4) first execution vs the textbook design", "c", "b4", "<= 0.6 at 0.5 ms round trip"),
    ("(ca)/(c) first execution waiting for a replica vs without", "ca", "c", ""),
    ("(c)/(b1) first execution vs its round trips by hand", "c", "b1", ""),
    ("(d)/(b2) replay vs one round trip by hand", "d", "b2", "<= 1.1 at 0.5 ms round trip"),
    ("(t)/(d) tiered replay vs RedisStore replay", "t", "d", ""),
    ("(p)/(p1) PostgreSQL first execution vs its statements by hand", "p", "p1", ""),
    ("(q)/(p2) PostgreSQL replay vs its statement by hand", "q", "p2", ""),
]
shown = [pair for pair in p50_pairs if pair[1] in runs and pair[2] in runs]
if shown:
    print("\np50 ratios (lower is better):\n")
for label, num, den, target in shown:
    print_ratio(label, num, den, target, "p50")
PY
