#!/usr/bin/env bash
# The end-to-end load comparison: one axum handler behind each idempotency variant, driven by
# wrk on loopback at a fixed concurrency, all in one run, reported as requests/s, p50, p99, the
# CPU time the server and Redis spend per request (from /proc), and ratios. Installs wrk and
# redis-server (Debian packages) when missing.
#
# On a shared machine one measurement per variant is noise: the run goes through every variant
# ROUNDS times, in turn, and reports each variant's median round; each ratio is the median of
# the ratios within a round (numerator and denominator measured minutes apart at most).
#
#   ./scripts/load.sh                         # 5 rounds of 10 s per variant, 64 connections
#   ROUNDS=1 DURATION=20 CONNECTIONS=128 ./scripts/load.sh
#   VARIANTS="b1 c b2 d" ./scripts/load.sh    # only these variants (a full run takes a while)
#   BASELINE=dc26008 ./scripts/load.sh        # adds c0 and d0: (c) and (d) built at that revision
#
# VARIANTS picks variants by name; they still run in the script's order, so the two sides of a
# ratio stay back to back, and ratios whose sides were not both run are left out of the report.
# BASELINE answers "did this change slow the layer down?" within one run: comparing with the
# README's figures mixes in the machine's run-to-run noise, which is as large as the effects
# worth catching. It builds load_server at that revision (a git worktree and its own
# CARGO_TARGET_DIR, both under target/load-baseline/, so the main build is untouched; the
# worktree is removed at exit, the build is kept for the next run) and runs c0 next to c and d0
# next to d in every round, after them in odd rounds and before them in even ones (so that
# whatever favours the first or the second of two runs cannot pass for a difference between the
# revisions); the report adds the ratios (c)/(c0) and (d)/(d0).
#
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
# b2 then d), so both see the same minute of a shared machine.
# With BASELINE, c0 and d0 (the baseline binary: a name ending in 0) follow c and d, so that c
# sits next to both b1 and c0, and d next to both b2 and d0 (in every other round they come
# just before them).
all_variants=(
  "a|bare|fresh|no idempotency"
  "l|ours-cached|replay|tower-idempotency, ReplayCache<RedisStore>, replays"
  "b1|manual-first|fresh|handler makes 2 EVALSHA by hand"
  "c|ours-redis|fresh|tower-idempotency, RedisStore, first executions"
  "c0|ours-redis|fresh|tower-idempotency at $baseline, RedisStore, first executions"
  "b2|manual-replay|replay|handler makes 1 EVALSHA by hand"
  "d|ours-redis|replay|tower-idempotency, RedisStore, replays"
  "d0|ours-redis|replay|tower-idempotency at $baseline, RedisStore, replays"
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
  [[ "$known" == *" $name "* ]] || { echo "unknown variant $name; known:$known(c0 and d0 come with BASELINE)" >&2; exit 1; }
done
variants=()
for entry in "${all_variants[@]}"; do
  name=${entry%%|*}
  # c0 and d0 run with c and d, and only with a baseline.
  case "$name" in *0) [ -n "$baseline" ] || continue; name=${name%0} ;; esac
  if [[ "$wanted" == *" $name "* ]]; then variants+=("$entry"); fi
done

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release -q -p benches --bin load_server
server_bin=target/release/load_server

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
  --logfile "$redis_dir/redis.log" &
redis_pid=$!
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  # Redis writes its log until it is gone: wait for it, or the directory may not be empty yet.
  kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
  rm -rf "$redis_dir" || true
  [ -z "$worktree" ] || git worktree remove --force "$worktree" 2>/dev/null || true
}
trap cleanup EXIT
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
export REDIS_URL="redis://127.0.0.1:$redis_port"
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done

for round in $(seq 1 "$ROUNDS"); do
  order=("${variants[@]}")
  # Every other round, each baseline variant runs before its counterpart instead of after, so
  # that neither side of (c)/(c0) and (d)/(d0) always runs second.
  if [ $((round % 2)) -eq 0 ]; then
    for i in "${!order[@]}"; do
      if [ "$i" -gt 0 ] && [[ "${order[$i]}" == "${order[$((i - 1))]%%|*}0|"* ]]; then
        entry=${order[$i]}; order[$i]=${order[$((i - 1))]}; order[$((i - 1))]=$entry
      fi
    done
  fi
  for entry in "${order[@]}"; do
    IFS='|' read -r name variant script what <<<"$entry"
    redis-cli -p "$redis_port" flushall >/dev/null
    port=$(free_port)
    bin=$server_bin
    case "$name" in *0) bin=$baseline_bin ;; esac
    "$bin" "$variant" "127.0.0.1:$port" &
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
    # CPU time (user + system, in clock ticks) the server and Redis spend during the run.
    server_ticks=$(cpu_ticks "$server_pid"); redis_ticks=$(cpu_ticks "$redis_pid")
    # LOAD_COOKIE only when there is a cookie (axum-idempotent's session): the other variants'
    # requests carry no Cookie header at all, as their clients would send them (an empty one
    # once made every replay a 422 when empty credentials counted).
    if [ -n "$cookie" ]; then export LOAD_COOKIE="$cookie"; else unset LOAD_COOKIE; fi
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "scripts/load/$script.lua" \
      "http://127.0.0.1:$port/orders" >"$out/$name.$round.txt"
    echo "cpu ticks: server $(( $(cpu_ticks "$server_pid") - server_ticks ))" \
      "redis $(( $(cpu_ticks "$redis_pid") - redis_ticks )) per $(getconf CLK_TCK)" >>"$out/$name.$round.txt"
    grep -E "Requests/sec|Non-2xx" "$out/$name.$round.txt" || true
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
    server_pid=""
  done
done

python3 - "$out" "$DURATION" "$CONNECTIONS" "$ROUNDS" "$baseline" "${variants[@]}" <<'PY' | tee "$out/report.md"
import re, sys, platform, os, statistics
out, duration, connections, rounds, baseline = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
entries = sys.argv[6:]
def micros(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
def measure(name, round):
    raw = open(f"{out}/{name}.{round}.txt").read()
    # Anchored: the thread stats line can hold "...50%" too.
    p50 = micros(re.search(r"^\s+50%\s+(\S+)", raw, re.M).group(1))
    p99 = micros(re.search(r"^\s+99%\s+(\S+)", raw, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", raw)
    server, redis, hz = map(int, re.search(r"cpu ticks: server (\d+) redis (\d+) per (\d+)", raw).groups())
    requests = int(re.search(r"(\d+) requests in", raw).group(1))
    per_request = lambda ticks: ticks / hz / requests * 1e6
    return dict(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", raw).group(1)), p50=p50, p99=p99,
                server=per_request(server), redis=per_request(redis), bad=int(bad.group(1)) if bad else 0)
runs = {}
rows = []
for entry in entries:
    name, variant, script, what = entry.split("|")
    runs[name] = [measure(name, r) for r in range(1, rounds + 1)]
    median = sorted(runs[name], key=lambda m: m["rps"])[(rounds - 1) // 2]
    rows.append((name, what, median, min(m["rps"] for m in runs[name]), max(m["rps"] for m in runs[name])))
# Shown in the order of the letters, whatever order they ran in.
display = ["a", "b1", "b2", "c", "c0", "d", "d0", "e", "l", "f", "f2"]
rows.sort(key=lambda row: display.index(row[0]) if row[0] in display else len(display))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Load comparison: wrk, 1 thread, {connections} connections, {rounds} rounds of {duration} s per "
      f"variant, loopback; {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}.\n")
print("axum-idempotent runs on ruts' in-memory MokaStore: ruts' Redis store needs HEXPIRE "
      "(Redis 7.4+) and Debian 12 ships Redis 7.0.\n")
print("Each row is the variant's median round; the range is over all rounds.\n")
if baseline:
    print(f"c0 and d0 are c and d with load_server built at {baseline}, each run next to its "
          "counterpart in every round (after it in odd rounds, before it in even ones).\n")
print("| variant | what | requests/s | range | p50 | p99 | server CPU / request | Redis CPU / request | non-2xx |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, what, m, low, high in rows:
    print(f"| {name} | {what} | {m['rps']:,.0f} | {low:,.0f}-{high:,.0f} | {m['p50']:,.0f} us "
          f"| {m['p99']:,.0f} us | {m['server']:.1f} us | {m['redis']:.1f} us | {m['bad']} |")
print()
for label, num, den, target in [
    ("(c)/(b1) first execution vs hand-made round trips", "c", "b1", ">= 0.8"),
    ("(d)/(b2) replay vs hand-made round trip", "d", "b2", ">= 0.9"),
    ("(l)/(a) replay through the local tier vs no idempotency", "l", "a", ">= 0.8"),
    ("(e)/(a) MemoryStore first execution vs no idempotency", "e", "a", ""),
    ("(c)/(f) Redis vs axum-idempotent in memory, first executions", "c", "f", "> 1"),
    ("(e)/(f) both in memory, first executions", "e", "f", ""),
    ("(d)/(f2) Redis vs axum-idempotent in memory, replays", "d", "f2", ""),
    ("(l)/(f2) local tier vs axum-idempotent in memory, replays", "l", "f2", ""),
    (f"(c)/(c0) first execution vs itself at {baseline}", "c", "c0", ""),
    (f"(d)/(d0) replay vs itself at {baseline}", "d", "d0", ""),
]:
    if num not in runs or den not in runs:
        continue
    ratios = [n["rps"] / d["rps"] for n, d in zip(runs[num], runs[den])]
    rounds_text = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"- {label}: **{statistics.median(ratios):.2f}** (rounds: {rounds_text})"
          + (f"; target {target}" if target else ""))
PY
