#!/usr/bin/env bash
# mock-openai vs a wiremock-rs stub under the same wrk load on loopback: requests/s and latency
# percentiles for POST /v1/chat/completions with zero modelled latency.
#
# Rows: wiremock-rs (serves on one current-thread runtime, its design); mock-openai with limits
# off (--no-limits) and with limits on (huge limits, nothing rejected), each with 1 tokio worker
# (same as wiremock) and with the default workers. Then a paced run near 5,000 requests/s.
#
#   benches/mock_vs_wiremock.sh            # 10 s per run
#   DURATION=5s CONNS=32 benches/mock_vs_wiremock.sh
#
# Needs `wrk` (Debian: apt-get install -y wrk). wrk2 is not packaged, so the 5,000 req/s row is
# paced with wrk's Lua delay(): 50 connections each waiting 10 ms between requests. That is a
# closed loop, so its percentiles are not corrected for coordinated omission.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
TARGET="${CARGO_TARGET_DIR:-target}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 1; }

cargo build --quiet --release -p mock-openai --bin mock-openai
cargo build --quiet --release -p tagstorm-benches --features peers --example wiremock_stub

work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":[{"type":"text","text":"Tag this image."},{"type":"image_url","image_url":{"url":"https://img.example/bench.jpg","detail":"low"}}]}]}'
LUA
cp "$work/post.lua" "$work/paced.lua"
echo 'function delay() return 10 end' >>"$work/paced.lua"

cat >"$work/zero.toml" <<'TOML'
[upstream]
latency = { kind = "fixed", ms = 0 }
TOML
cat >"$work/huge.toml" <<'TOML'
[account]
model = "gpt-4o-mini"
rpm = 100000000
tpm = 100000000000
batch_queue_tokens = 1000000000
[upstream]
latency = { kind = "fixed", ms = 0 }
TOML

start() { # command... ; sets pid and url
  "$@" >"$work/out" 2>"$work/err" &
  pid=$!
  url=""
  for _ in $(seq 1 100); do
    url="$(head -n 1 "$work/out" | sed -n 's/^listening on //p')"
    [ -n "$url" ] && return 0
    sleep 0.05
  done
  echo "server did not start: $*" >&2; cat "$work/err" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

rows=()
run() { # label script conns
  local label="$1" script="$2" conns="$3"
  wrk -t1 -c"$conns" -d2s -s "$script" "$url/v1/chat/completions" >/dev/null # warm-up
  # Server CPU (user + system ticks from /proc) over the measured run: wrk shares the CPUs, so
  # CPU time per request is the comparison that doesn't depend on who wins the scheduler.
  local t0 t1
  t0="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  wrk -t1 -c"$conns" -d"$DURATION" --latency -s "$script" "$url/v1/chat/completions" >"$work/wrk"
  t1="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  local rps p50 p90 p99 non2xx n cpu_us
  rps="$(awk '/^Requests\/sec/ {print $2}' "$work/wrk")"
  p50="$(awk '$1=="50%" {print $2}' "$work/wrk")"
  p90="$(awk '$1=="90%" {print $2}' "$work/wrk")"
  p99="$(awk '$1=="99%" {print $2}' "$work/wrk")"
  non2xx="$(awk '/Non-2xx/ {print $5}' "$work/wrk")"
  n="$(awk '/requests in/ {print $1}' "$work/wrk")"
  cpu_us="$(awk -v d="$((t1 - t0))" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
  rows+=("| $label | $conns | ${rps} | ${p50} | ${p90} | ${p99} | ${non2xx:-0} | ${cpu_us} |")
  echo "${rows[-1]}"
}

mock="$TARGET/release/mock-openai"
stub="$TARGET/release/examples/wiremock_stub"

start "$stub"; run "wiremock-rs stub (1 thread)" "$work/post.lua" "$CONNS"; stop
start env TOKIO_WORKER_THREADS=1 "$mock" --port 0 --no-limits --config "$work/zero.toml"
run "mock-openai, limits off, 1 worker" "$work/post.lua" "$CONNS"; stop
start env TOKIO_WORKER_THREADS=1 "$mock" --port 0 --config "$work/huge.toml"
run "mock-openai, limits on, 1 worker" "$work/post.lua" "$CONNS"; stop
start "$mock" --port 0 --no-limits --config "$work/zero.toml"
run "mock-openai, limits off, default workers" "$work/post.lua" "$CONNS"; stop
start "$mock" --port 0 --config "$work/huge.toml"
run "mock-openai, limits on, default workers" "$work/post.lua" "$CONNS"; stop
start "$mock" --port 0 --config "$work/huge.toml"
run "mock-openai, limits on, paced ~5,000 req/s" "$work/paced.lua" 50; stop
start "$stub"; run "wiremock-rs stub, paced ~5,000 req/s" "$work/paced.lua" 50; stop

echo
echo "wrk -t1, $DURATION per row after a 2 s warm-up, POST /v1/chat/completions, $(nproc) CPUs shared by server and wrk"
echo
echo "| server | connections | requests/s | p50 | p90 | p99 | non-2xx | server CPU µs/request |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
