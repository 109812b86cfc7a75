#!/usr/bin/env bash
# mock-openai vs a wiremock-rs stub, side by side in one run, on loopback: POST
# /v1/chat/completions with zero modelled latency. Prints markdown tables with the ratios.
#
# 1. Closed loop (wrk, CONNS connections, as fast as they go): requests/s, wrk's latency
#    percentiles, and the server's CPU time per request (user + system ticks from /proc/PID/stat
#    over the measured run). Rows: wiremock-rs; mock-openai --no-limits; mock-openai with limits
#    on (huge limits, nothing rejected); both mock-openai rows with one worker thread; without
#    pinning also mock-openai --no-limits --workers 2.
# 2. Open loop at RATE requests/s with oha --latency-correction (coordinated omission
#    corrected), when oha is installed; else wrk paced with Lua delay() (a closed loop, so not
#    corrected). The open loop also runs a noise-floor row: benches/examples/hello_floor.rs, a
#    trivial keep-alive server that answers a fixed body and does nothing else, so its tail
#    latency is the machine's (loopback, scheduler, VM), not a server's.
#
# Each round runs every row once, wiremock first; ROUNDS rounds. Pinning (PIN=1, the default
# on 2+ CPUs): the server runs on CPU 1 and the load generator on CPU 0 (taskset), so they do
# not take turns on one core; PIN=0 leaves both to the scheduler.
#
#   benches/mock_vs_wiremock.sh
#   DURATION=5s ROUNDS=1 PIN=0 OHA=/tmp/oha/bin/oha benches/mock_vs_wiremock.sh
#   OPEN_ONLY=1 OPEN_CONNS=16 OHA=/tmp/oha/bin/oha benches/mock_vs_wiremock.sh
#
# OPEN_CONNS (default 50) is the open loop's connection count: the tail it measures depends on
# it (the load generator's own scheduling is part of it), so compare servers at one count.
# OPEN_ONLY=1 skips the closed loop.
#
# PAIRED=1 runs servers two at a time instead, both on the same CPU (CPU 1 when pinned) and
# each loaded by its own wrk, and compares them by CPU time per request and by requests
# served. Whatever else the machine does then disturbs both sides of a pair alike, so the
# ratios hold within about 1% from round to round while absolute figures move by half (see
# BENCHMARKS.md). PAIRS lists the pairs as A:B (default: a control pair of one server against
# itself, limits on against off, and mock-openai against wiremock-rs):
#
#   PAIRED=1 ROUNDS=4 DURATION=5s benches/mock_vs_wiremock.sh
#   PAIRED=1 PAIRS="nolimits:limits" ROUNDS=8 benches/mock_vs_wiremock.sh
#
# Needs wrk (Debian: apt-get install -y wrk); oha is optional (cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
RATE="${RATE:-5000}"
OPEN_CONNS="${OPEN_CONNS:-50}"
OPEN_ONLY="${OPEN_ONLY:-0}"
PAIRED="${PAIRED:-0}"
PAIRS="${PAIRS:-nolimits:nolimits nolimits:limits wiremock:nolimits}"
ROUNDS="${ROUNDS:-2}"
TARGET="${CARGO_TARGET_DIR:-target}"
OHA="${OHA:-$(command -v oha || true)}"
PIN="${PIN:-$([ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && echo 1 || echo 0)}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 1; }

cargo build --quiet --release -p mock-openai --bin mock-openai
cargo build --quiet --release -p tagstorm-benches --features peers --example wiremock_stub \
  --example hello_floor

if [ "$PIN" = 1 ]; then
  srv=(taskset -c 1) gen=(taskset -c 0) pinning="server on CPU 1, load generator on CPU 0"
else
  srv=() gen=() pinning="no pinning (server and load generator share $(nproc) CPUs)"
fi

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

body='{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":[{"type":"text","text":"Tag this image."},{"type":"image_url","image_url":{"url":"https://img.example/bench.jpg","detail":"low"}}]}]}'
printf '%s' "$body" >"$work/body.json"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '$body'
LUA
cp "$work/post.lua" "$work/paced.lua"
# 50 connections × one request per 10 ms ≈ 5,000 requests/s when answers are fast.
echo 'function delay() return 10 end' >>"$work/paced.lua"


mock="$TARGET/release/mock-openai"
stub="$TARGET/release/examples/wiremock_stub"
declare -A server=(
  [floor]="$TARGET/release/examples/hello_floor"
  [wiremock]="$stub"
  [nolimits]="$mock --port 0 --no-limits --config benches/mock/zero-latency.toml"
  [limits]="$mock --port 0 --config benches/mock/huge-limits.toml"
  [nolimits2]="$mock --port 0 --no-limits --config benches/mock/zero-latency.toml --workers 2"
)
declare -A label=(
  [floor]="noise floor: trivial server (hello_floor, 1 thread)"
  [wiremock]="wiremock-rs stub (1 thread)"
  [nolimits]="mock-openai --no-limits, 1 worker"
  [limits]="mock-openai, limits on (huge), 1 worker"
  [nolimits2]="mock-openai --no-limits, --workers 2"
)

start() { # key; sets pid and url
  # shellcheck disable=SC2086 # the command line is split on purpose
  "${srv[@]}" ${server[$1]} >"$work/out" 2>"$work/err" &
  pid=$!
  url=""
  for _ in $(seq 1 100); do
    url="$(head -n 1 "$work/out" | sed -n 's/^listening on //p')"
    [ -n "$url" ] && return 0
    sleep 0.05
  done
  echo "server did not start: ${server[$1]}" >&2; cat "$work/err" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
cpu_us() { awk -v d="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }'; }

declare -A rps cpu
closed=() open=()
closed_loop() { # key round
  local key="$1" round="$2" t0 t1 n
  start "$key"
  "${gen[@]}" wrk -t1 -c"$CONNS" -d2s -s "$work/post.lua" "$url/v1/chat/completions" >/dev/null # warm-up
  t0="$(ticks)"
  "${gen[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$work/post.lua" "$url/v1/chat/completions" >"$work/wrk"
  t1="$(ticks)"
  stop
  n="$(awk '/requests in/ {print $1}' "$work/wrk")"
  rps[$key,$round]="$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$work/wrk")"
  cpu[$key,$round]="$(cpu_us "$((t1 - t0))" "$n")"
  closed+=("| ${label[$key]} | $round | ${rps[$key,$round]} | $(awk '$1=="50%" {print $2}' "$work/wrk") | $(awk '$1=="99%" {print $2}' "$work/wrk") | $(awk '/Non-2xx/ {print $5}' "$work/wrk" | grep . || echo 0) | ${cpu[$key,$round]} |")
  echo "${closed[-1]}"
}

open_loop() { # key round
  local key="$1" round="$2" t0 t1 n
  start "$key"
  if [ -n "$OHA" ]; then
    local oha=("${gen[@]}" "$OHA" --no-tui -c "$OPEN_CONNS" -q "$RATE" --latency-correction -m POST
      -H "Authorization: Bearer sk-bench" -H "content-type: application/json" -D "$work/body.json")
    "${oha[@]}" -z 2s --output-format quiet "$url/v1/chat/completions" >/dev/null # warm-up
    t0="$(ticks)"
    "${oha[@]}" -z "$DURATION" --output-format json "$url/v1/chat/completions" >"$work/oha"
    t1="$(ticks)"
    stop
    # Percentiles in seconds from the "latencyPercentiles" object; responses by status.
    local pct
    pct="$(awk '/"latencyPercentiles"/ {on=1; next} on && /}/ {exit}
      on { gsub(/[",:]/, ""); printf "%s %.3f ms\n", $1, $2 * 1000 }' "$work/oha")"
    n="$(awk '/"statusCodeDistribution"/ {on=1; next} on && /}/ {exit} on { gsub(/[",:]/, ""); s += $2 } END { print s }' "$work/oha")"
    local got
    got="$(awk '/"requestsPerSec"/ { gsub(/,/, ""); printf "%.0f", $2; exit }' "$work/oha")"
    open+=("| ${label[$key]} | $round | $got | $(awk '$1=="p50" {print $2, $3}' <<<"$pct") | $(awk '$1=="p90" {print $2, $3}' <<<"$pct") | $(awk '$1=="p99" {print $2, $3}' <<<"$pct") | $(awk '$1=="p99.9" {print $2, $3}' <<<"$pct") | $(cpu_us "$((t1 - t0))" "$n") |")
  else
    "${gen[@]}" wrk -t1 -c"$OPEN_CONNS" -d2s -s "$work/paced.lua" "$url/v1/chat/completions" >/dev/null
    t0="$(ticks)"
    "${gen[@]}" wrk -t1 -c"$OPEN_CONNS" -d"$DURATION" --latency -s "$work/paced.lua" "$url/v1/chat/completions" >"$work/wrk"
    t1="$(ticks)"
    stop
    n="$(awk '/requests in/ {print $1}' "$work/wrk")"
    open+=("| ${label[$key]} | $round | $(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$work/wrk") | $(awk '$1=="50%" {print $2}' "$work/wrk") | $(awk '$1=="90%" {print $2}' "$work/wrk") | $(awk '$1=="99%" {print $2}' "$work/wrk") | - | $(cpu_us "$((t1 - t0))" "$n") |")
  fi
  echo "${open[-1]}"
}

pairs_out=()
paired_round() { # keyA keyB round: both servers at once on one CPU, one wrk each
  local a="$1" b="$2" round="$3" pa pb ua ub na nb ta tb
  local srv1=()
  [ "$PIN" = 1 ] && srv1=(taskset -c 1)
  # shellcheck disable=SC2086 # the command lines are split on purpose
  "${srv1[@]}" ${server[$a]} >"$work/out.a" 2>"$work/err.a" &
  pa=$!
  # shellcheck disable=SC2086
  "${srv1[@]}" ${server[$b]} >"$work/out.b" 2>"$work/err.b" &
  pb=$!
  for _ in $(seq 1 100); do
    ua="$(head -n 1 "$work/out.a" | sed -n 's/^listening on //p')"
    ub="$(head -n 1 "$work/out.b" | sed -n 's/^listening on //p')"
    [ -n "$ua" ] && [ -n "$ub" ] && break
    sleep 0.05
  done
  [ -n "$ua" ] && [ -n "$ub" ] || { echo "servers did not start: $a, $b" >&2; cat "$work/err.a" "$work/err.b" >&2; exit 1; }
  local w=("${gen[@]}" wrk -t1 -c"$CONNS" -s "$work/post.lua")
  "${w[@]}" -d1s "$ua/v1/chat/completions" >/dev/null &
  local warm=$!
  "${w[@]}" -d1s "$ub/v1/chat/completions" >/dev/null
  wait "$warm" || true
  ta="$(awk '{print $14 + $15}' "/proc/$pa/stat")"
  tb="$(awk '{print $14 + $15}' "/proc/$pb/stat")"
  # The two load generators start in turn; which goes first alternates by round, since the
  # second one measured about 4% more requests in control pairs (CPU per request: under 1%).
  local first=a second=b
  [ $((round % 2)) = 0 ] && first=b second=a
  local -A u=([a]="$ua" [b]="$ub")
  "${w[@]}" -d"$DURATION" "${u[$first]}/v1/chat/completions" >"$work/wrk.$first" &
  local w1=$!
  "${w[@]}" -d"$DURATION" "${u[$second]}/v1/chat/completions" >"$work/wrk.$second"
  wait "$w1"
  ta=$(( $(awk '{print $14 + $15}' "/proc/$pa/stat") - ta ))
  tb=$(( $(awk '{print $14 + $15}' "/proc/$pb/stat") - tb ))
  kill "$pa" "$pb"
  wait "$pa" "$pb" 2>/dev/null || true
  na="$(awk '/requests in/ {print $1}' "$work/wrk.a")"
  nb="$(awk '/requests in/ {print $1}' "$work/wrk.b")"
  pairs_out+=("$(awk -v la="${label[$a]}" -v lb="${label[$b]}" -v r="$round" -v na="$na" -v nb="$nb" \
    -v ta="$ta" -v tb="$tb" -v hz="$(getconf CLK_TCK)" 'BEGIN {
      ca = ta * 1e6 / hz / na; cb = tb * 1e6 / hz / nb
      printf "| %s | %s | %s | %d | %d | %+.1f%% | %.2f | %.2f | %+.1f%% |", la, lb, r, na, nb, (nb / na - 1) * 100, ca, cb, (cb / ca - 1) * 100 }')")
  echo "${pairs_out[-1]}"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $pinning"
for round in $(seq 1 "$ROUNDS"); do
  if [ "$PAIRED" = 1 ]; then
    for pair in $PAIRS; do paired_round "${pair%:*}" "${pair#*:}" "$round"; done
    continue
  fi
  if [ "$OPEN_ONLY" != 1 ]; then
    for key in wiremock nolimits limits; do closed_loop "$key" "$round"; done
    # Two workers only help when the server is not confined to one CPU.
    [ "$PIN" = 1 ] || closed_loop nolimits2 "$round"
  fi
  for key in floor wiremock limits nolimits; do open_loop "$key" "$round"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$PAIRED" = 1 ]; then
  echo
  echo "Pairs: both servers at once on the same CPU, wrk -t1 -c$CONNS each, $DURATION per round after a 1 s warm-up; $pinning."
  echo
  echo "| A | B | round | A requests | B requests | B / A, requests | A CPU µs/request | B CPU µs/request | B / A, CPU per request |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${pairs_out[@]}"
  echo
  for pair in $PAIRS; do
    # Medians over the rounds of the two ratio columns.
    printf '%s\n' "${pairs_out[@]}" | awk -F'|' -v a="${label[${pair%:*}]}" -v b="${label[${pair#*:}]}" '
      $2 == " " a " " && $3 == " " b " " { gsub(/[ %+]/, "", $7); gsub(/[ %+]/, "", $10); n++; r[n] = $7 + 0; c[n] = $10 + 0 }
      function med(v, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
      END { if (n) printf "%s against %s, median of %d rounds: %+.1f%% requests, %+.1f%% CPU per request.\n", b, a, n, med(r, n), med(c, n) }'
  done
  exit 0
fi
if [ "$OPEN_ONLY" != 1 ]; then
  echo
  echo "Closed loop: wrk -t1 -c$CONNS, $DURATION per row after a 2 s warm-up; $pinning."
  echo
  echo "| server | round | requests/s | p50 | p99 | non-2xx | server CPU µs/request |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${closed[@]}"
  echo
  echo "| round | no-limits / wiremock, req/s | wiremock / no-limits, CPU per request | limits on / off, req/s |"
  echo "|---|---|---|---|"
  for round in $(seq 1 "$ROUNDS"); do
    awk -v w="${rps[wiremock,$round]}" -v m="${rps[nolimits,$round]}" -v l="${rps[limits,$round]}" \
      -v cw="${cpu[wiremock,$round]}" -v cm="${cpu[nolimits,$round]}" -v r="$round" \
      'BEGIN { printf "| %s | %.2f× | %.2f× | %+.1f%% |\n", r, m / w, cw / cm, (l / m - 1) * 100 }'
  done
fi
echo
if [ -n "$OHA" ]; then
  echo "Open loop: $("$OHA" --version) -q $RATE -c $OPEN_CONNS --latency-correction, $DURATION per row after a 2 s warm-up; $pinning."
else
  echo "Paced (closed loop, NOT corrected for coordinated omission): wrk -t1 -c$OPEN_CONNS with delay() 10 ms, $DURATION per row; $pinning."
fi
echo
echo "| server | round | requests/s | p50 | p90 | p99 | p99.9 | server CPU µs/request |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${open[@]}"
