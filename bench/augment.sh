#!/usr/bin/env bash
# Speed of covseg's data augmentation side by side with Albumentations, on the same 512×512 lung-
# window phantom slices with the same ops, ranges and probabilities (stages/src/augment/config.rs;
# bench/augment_reference.py maps them onto Albumentations transforms). Four configurations:
# every op at p = 1 ("all-on") and the default probabilities, each with 1 and 2 workers (covseg:
# a rayon pool of that many threads over slices; Albumentations: that many processes).
#
# Needs: a Rust toolchain and python3 with albumentations 2.0.8 (pip install albumentations==2.0.8).
# Usage: bench/augment.sh [WORKDIR]
#   env: ROUNDS (default 3; the table shows the median round), SLICES_ALL_ON (default 200),
#        SLICES_DEFAULT (default 600), CARGO_TARGET_DIR (honoured).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-augbench.XXXXXX)}
mkdir -p "$work"
rounds=${ROUNDS:-3}
n_all=${SLICES_ALL_ON:-200}
n_default=${SLICES_DEFAULT:-600}

python3 -c "import albumentations" 2>/dev/null || {
  echo "bench/augment.sh needs albumentations: pip install albumentations==2.0.8" >&2
  exit 2
}
(cd "$repo" && cargo build --release --quiet -p covseg-stages --example augment_bench)
bench="${CARGO_TARGET_DIR:-$repo/target}/release/examples/augment_bench"
reference="$repo/bench/augment_reference.py"

# The same 16 distinct slices for both: written by covseg, read by the reference.
"$bench" 1 --distinct 16 --write-npy "$work/slices.npy" >/dev/null
echo "workdir: $work; $(nproc) cores; $(python3 -c 'import albumentations, cv2; print("albumentations", albumentations.__version__, "opencv", cv2.__version__)')"

results="$work/results.jsonl"
: > "$results"
# Rounds interleave the two tools so that both see the same background load.
for round in $(seq "$rounds"); do
  for config in all-on default; do
    if [ "$config" = all-on ]; then n=$n_all; flag=--all-on; else n=$n_default; flag=; fi
    for workers in 1 2; do
      "$bench" "$n" $flag --threads "$workers" --distinct 16 >> "$results"
      python3 "$reference" "$work/slices.npy" "$n" $flag --procs "$workers" >> "$results"
    done
  done
  # Other work on the machine skews both tools; the load average lets the reader judge a round.
  echo "round $round of $rounds done (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def median(impl, config, workers):
    rates = [r["slices_per_s"] for r in rows
             if r["impl"].startswith(impl) and r["config"] == config and r["threads"] == workers]
    return statistics.median(rates), len(rates)
print()
print("| configuration | workers | covseg (slices/s) | Albumentations (slices/s) | covseg / Albumentations |")
print("|---|---|---|---|---|")
for config in ("all-on", "default"):
    for workers in (1, 2):
        ours, n = median("covseg", config, workers)
        theirs, _ = median("albumentations", config, workers)
        print(f"| {config} | {workers} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}× |")
print(f"\nmedian of {n} rounds; 512×512, 1 channel; raw results: {sys.argv[1]}")
PY
