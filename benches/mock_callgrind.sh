#!/usr/bin/env bash
# Instructions per request of mock-openai's POST /v1/chat/completions under callgrind: the
# server's total over N2 requests minus its total over N1 (start-up, shutdown and warm-up cancel
# out), divided by N2 - N1. Instruction counts do not depend on what else runs on the machine,
# so this shows changes that wall-clock figures on a shared box cannot.
#
#   benches/mock_callgrind.sh                 # --no-limits and limits on (huge), 2,000 vs 12,000
#   MODES=nolimits N1=1000 N2=6000 benches/mock_callgrind.sh
#   KEEP=/tmp/cg benches/mock_callgrind.sh     # keep the callgrind files for callgrind_annotate
#
# Needs valgrind and oha (OHA=/path/to/oha); builds the release binary (CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
N1="${N1:-2000}"
N2="${N2:-12000}"
CONNS="${CONNS:-4}"
MODES="${MODES:-nolimits limits}"
TARGET="${CARGO_TARGET_DIR:-target}"
OHA="${OHA:-$(command -v oha || true)}"
[ -n "$OHA" ] || { echo "needs oha (cargo install oha --locked)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }

cargo build --quiet --release -p mock-openai --bin mock-openai
mock="$TARGET/release/mock-openai"

work="$(mktemp -d)"
keep="${KEEP:-$work}"
mkdir -p "$keep"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

body='{"model":"gpt-4o-mini","max_tokens":60,"messages":[{"role":"user","content":[{"type":"text","text":"Tag this image."},{"type":"image_url","image_url":{"url":"https://img.example/bench.jpg","detail":"low"}}]}]}'
printf '%s' "$body" >"$work/body.json"
declare -A args=(
  [nolimits]="--no-limits --config benches/mock/zero-latency.toml"
  [limits]="--config benches/mock/huge-limits.toml"
)

total() { # mode requests; prints the callgrind total
  local out="$keep/cg.$1.$2"
  # shellcheck disable=SC2086 # the arguments are split on purpose
  valgrind --tool=callgrind --callgrind-out-file="$out" "$mock" --port 0 ${args[$1]} \
    >"$work/out" 2>"$work/err" &
  pid=$!
  local url=""
  for _ in $(seq 1 600); do
    url="$(head -n 1 "$work/out" | sed -n 's/^listening on //p')"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "server did not start" >&2; cat "$work/err" >&2; exit 1; }
  "$OHA" --no-tui --output-format quiet -n "$2" -c "$CONNS" -m POST \
    -H "Authorization: Bearer sk-bench" -H "content-type: application/json" \
    -D "$work/body.json" "$url/v1/chat/completions" >/dev/null
  kill -INT "$pid"
  wait "$pid" || true
  pid=""
  awk '/^totals:/ {print $2}' "$out"
}

echo "| mode | total over $N1 | total over $N2 | instructions/request |"
echo "|---|---:|---:|---:|"
for mode in $MODES; do
  a="$(total "$mode" "$N1")"
  b="$(total "$mode" "$N2")"
  echo "| $mode | $a | $b | $(( (b - a) / (N2 - N1) )) |"
done
