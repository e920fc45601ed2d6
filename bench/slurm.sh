#!/usr/bin/env bash
# What running tune's trials as Slurm jobs costs over the local executor: the same search (the
# demo's tune stage, 4 trials with ASHA, one trial at a time, one CPU per trial) run twice on the
# same machine, once with [executor] kind = "local" and once with kind = "slurm" on the one-node
# cluster of tests/slurm/start.sh (started here when SLURM_CONF names none). Both searches give
# the same trials table; the difference in wall time per segment is the executor's overhead
# (sbatch, scheduling, job start and the poll interval).
#
# Usage: bench/slurm.sh [WORKDIR]    env: POLL (seconds, default 0.2), CARGO_TARGET_DIR (honoured)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-slurmbench.XXXXXX)}
poll=${POLL:-0.2}
mkdir -p "$work"
(cd "$repo" && cargo build --release --quiet)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
covseg="$target/release/covseg"

if [ -z "${SLURM_CONF:-}" ] || ! scontrol ping 2>/dev/null | grep -q "is UP"; then
  eval "$("$repo/tests/slurm/start.sh")"
fi

# The demo pipeline up to its tune stage, the tune stage with one CPU per trial, and an
# [executor] table.
pipeline() { # executor-kind
  python3 - "$repo/examples/demo.toml" "$1" "$poll" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
kind, poll = sys.argv[2], sys.argv[3]
stages = text.split("\n[[stage]]")
head, stages = stages[0], stages[1:]
# Each run's own cache and outputs folder, beside its pipeline file.
head = "\n".join(l for l in head.splitlines() if not l.startswith(("cache =", "outputs =")))
keep = []
for s in stages:
    keep.append(s)
    if re.search(r'^name = "tune"', s, re.M):
        break
tune = keep[-1]
tune = re.sub(r'^kind = "tune"$', 'kind = "tune"\nresources = { cpu = 1 }', tune, count=1, flags=re.M)
tune = re.sub(r'^parallel = \d+$', 'parallel = 1', tune, flags=re.M)
keep[-1] = tune
executor = f'\n[executor]\nkind = "{kind}"\ncpus = 1\npoll_interval = {poll}\n'
print(head.rstrip() + "\n" + executor + "".join("\n[[stage]]" + s for s in keep))
PY
}

seconds() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print([s for s in r["stages"] if s["name"]=="tune"][0]["seconds"])' "$1"; }

for kind in local slurm; do
  dir="$work/$kind"
  rm -rf "$dir"
  mkdir -p "$dir"
  pipeline "$kind" > "$dir/pipeline.toml"
  # The data (phantoms, split, augment) is built first and is the same for both.
  (cd "$dir" && "$covseg" -q run --stage augment > /dev/null)
  (cd "$dir" && "$covseg" -q run --stage tune > /dev/null)
  latest=$(ls -t "$dir/cache/runs/"*.json | head -n1)
  echo "$kind $(seconds "$latest")" >> "$work/times"
done

python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
times = {}
for line in open(os.path.join(work, "times")):
    kind, s = line.split()
    times[kind] = float(s)
tables = {k: json.load(open(os.path.join(work, k, "outputs", "tune", "trials.json"))) for k in ("local", "slurm")}
rows = lambda t: [(r["params"], r["state"], r["scores"]) for r in t["trials"]]
same = rows(tables["local"]) == rows(tables["slurm"])
segments = sum(r["segments"] for r in tables["slurm"]["trials"])
over = (times["slurm"] - times["local"]) / segments
print(f"| executor | tune wall time | segments | per segment |")
print(f"|---|---|---|---|")
for k in ("local", "slurm"):
    print(f"| {k} | {times[k]:.1f} s | {segments} | {times[k] / segments:.2f} s |")
print(f"\nSlurm overhead: {over:.2f} s per segment ({times['slurm'] / times['local']:.2f}× the local wall time); same trials table: {same}")
PY
