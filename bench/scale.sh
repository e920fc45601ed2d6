#!/usr/bin/env bash
# How planning and a no-op run grow with the number of stages. Generated pipelines of N
# independent `synth` stages (1 slice of 64×64 each): `covseg plan` on a fresh cache, then a first
# `covseg run` to fill the cache, then `covseg plan` and a no-op `covseg run` (every stage a hit),
# each timed by hyperfine. Goal: 10,000 stages in ≤ 1 s for plan and for the no-op run, 100,000
# within 15 s.
#
# Needs: hyperfine (Debian package), python3, a release build.
# Usage: bench/scale.sh [WORKDIR]   SIZES="500 2000 5000 10000 100000" RUN_SIZES="... stages also run"
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-scale.XXXXXX)}
mkdir -p "$work"
covseg="${CARGO_TARGET_DIR:-$repo/target}/release/covseg"
[ -x "$covseg" ] || (cd "$repo" && cargo build --release --quiet)
command -v hyperfine >/dev/null || { echo "bench/scale.sh needs hyperfine" >&2; exit 2; }
sizes=${SIZES:-"500 2000 5000 10000 100000"}
run_sizes=${RUN_SIZES:-"500 2000 5000 10000"}
runs=${RUNS:-3}
echo "workdir: $work; $(nproc) cores; $("$covseg" --version)"

generate() { # N FILE
  python3 - "$1" "$2" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write('[pipeline]\nname = "scale"\nseed = 1\n')
    for i in range(n):
        f.write(f'\n[[stage]]\nname = "s{i}"\nkind = "synth"\nparams = {{ slices = 1, size = 64, noise_hu = {20 + i / 1e4} }}\n')
PY
}

printf '| stages | plan, empty cache | first run | plan, all cached | no-op run |\n|---|---|---|---|---|\n' > "$work/scale.md"
for n in $sizes; do
  dir="$work/n$n"
  mkdir -p "$dir"
  generate "$n" "$dir/pipeline.toml"
  rm -rf "$dir/cache"
  hyperfine -N --runs "$runs" --export-json "$dir/plan-empty.json" \
    "$covseg plan -q -p $dir/pipeline.toml" >/dev/null
  plan_empty=$(python3 -c "import json;print('%.3f s' % json.load(open('$dir/plan-empty.json'))['results'][0]['mean'])")
  first="-"; plan_cached="-"; noop="-"
  if [[ " $run_sizes " == *" $n "* ]]; then
    t0=$(date +%s.%N)
    "$covseg" run -q -p "$dir/pipeline.toml" >/dev/null
    first=$(python3 -c "print('%.1f s' % ($(date +%s.%N) - $t0))")
    hyperfine -N --runs "$runs" --export-json "$dir/plan-cached.json" \
      "$covseg plan -q -p $dir/pipeline.toml" >/dev/null
    hyperfine -N --runs "$runs" --export-json "$dir/noop.json" \
      "$covseg run -q -p $dir/pipeline.toml" >/dev/null
    plan_cached=$(python3 -c "import json;print('%.3f s' % json.load(open('$dir/plan-cached.json'))['results'][0]['mean'])")
    noop=$(python3 -c "import json;print('%.3f s' % json.load(open('$dir/noop.json'))['results'][0]['mean'])")
  fi
  echo "| $n | $plan_empty | $first | $plan_cached | $noop |" | tee -a "$work/scale.md"
done
echo
cat "$work/scale.md"
