#!/usr/bin/env bash
# Builds tagstorm-sim with profile-guided optimisation (PGO), then times it next to the plain
# release build, side by side in one run on one CPU.
#
#   benches/pgo.sh                 # build, then 5 alternating rounds on the million-image day
#   ROUNDS=0 benches/pgo.sh        # build only
#   ROUNDS=10 IMAGES=1000000 CPU=1 benches/pgo.sh
#
# Both builds use the `pgo` profile (Cargo.toml): release with `panic = "abort"`.
# Steps: an instrumented build (`-Cprofile-generate`) runs a training set; llvm-profdata merges
# what it counted; a second build (`-Cprofile-use`) lays out and inlines the code by those
# counts. The training set is every shipped scenario under `compare` (the three presets) and
# the workday at Tier 4 and at ten times its uploads: the shipped traffic, not the benchmark's
# million-image run itself. The optimised binary gives byte-identical results; only its
# speed differs. It lands at $TARGET/pgo/tagstorm-sim.
#
# Needs rustup's llvm-tools component for llvm-profdata (installed here when missing), and
# taskset to pin (CPU=none to not pin). Each build takes a few minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
IMAGES="${IMAGES:-1000000}"
TARGET="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
CPU="${CPU:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}"
pin=()
if [ "$CPU" != none ] && command -v taskset >/dev/null; then pin=(taskset -c "$CPU"); fi

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "pgo: installing rustup's llvm-tools for llvm-profdata" >&2
  rustup component add llvm-tools
fi

pgo="$TARGET/pgo"
profiles="$pgo/profiles"
rm -rf "$profiles" "$pgo/merged.profdata"
mkdir -p "$profiles"

echo "pgo: 1/4 instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$profiles" \
  cargo build --quiet --profile pgo -p tagstorm-sim --bin tagstorm-sim --target-dir "$pgo/generate"
gen="$pgo/generate/pgo/tagstorm-sim"

echo "pgo: 2/4 training on the shipped scenarios" >&2
for s in scenarios/*.toml; do
  "$gen" compare "$s" >/dev/null
done
"$gen" compare scenarios/workday.toml --set account.tier=4 >/dev/null
"$gen" run scenarios/workday.toml --set uploads.0.daily.uploads_per_day=7500 >/dev/null

echo "pgo: 3/4 merging the profiles" >&2
"$profdata" merge -o "$pgo/merged.profdata" "$profiles"

echo "pgo: 4/4 optimised build" >&2
RUSTFLAGS="-Cprofile-use=$pgo/merged.profdata" \
  cargo build --quiet --profile pgo -p tagstorm-sim --bin tagstorm-sim --target-dir "$pgo/use"
cp "$pgo/use/pgo/tagstorm-sim" "$pgo/tagstorm-sim"
echo "pgo: built $pgo/tagstorm-sim" >&2

[ "$ROUNDS" -gt 0 ] || exit 0
cargo build --quiet --release -p tagstorm-sim --bin tagstorm-sim
plain="$TARGET/release/tagstorm-sim"

# loop_rate BIN: the best event-loop events/s of 3 runs, in millions.
loop_rate() {
  "${pin[@]}" "$1" bench scenarios/workday.toml --images "$IMAGES" --runs 3 --json |
    sed -E 's/.*"loop_events_per_s": ?([0-9.e+-]+).*/\1/' | awk '{ printf "%.2f", $1 / 1e6 }'
}

echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); pinned: ${pin[*]:-no}; $(date -u +%FT%TZ)"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown); workday scaled to $IMAGES images"
echo
echo "| round | release (M events/s, best of 3) | PGO (M events/s, best of 3) | PGO / release |"
echo "|---|---|---|---|"
ratios=()
for r in $(seq "$ROUNDS"); do
  a=$(loop_rate "$plain")
  b=$(loop_rate "$pgo/tagstorm-sim")
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
  echo "| $r | $a | $b | ${ratio}× |"
  ratios+=("$ratio")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR]=$1 } END { printf "\nmedian PGO / release: %.3f×\n", a[int((NR+1)/2)] }'
