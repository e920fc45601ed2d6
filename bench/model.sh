#!/usr/bin/env bash
# Speed of covseg's U-Net side by side with PyTorch: segmentation_models_pytorch's
# Unet("efficientnet-b0", encoder_weights=None, in_channels=1, classes=2) against covseg's
# UnetConfig::default() (the same network, SMP layout), both on this machine's CPU.
#   training:  batch 4 — forward, BCE + soft Dice, backward, AdamW step (images/s)
#   inference: batch 1, evaluation mode, no autograd (images/s)
# at 512×512 and 256×256, with each process's peak resident memory.
#
# Fair protocol: PyTorch with torch.set_num_threads(THREADS) and glibc's mmap/trim thresholds
# raised (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, else glibc unmaps every tensor over
# 32 MiB at each step); covseg with a rayon pool of THREADS and the same thresholds, which the
# covseg binary sets itself (stages/src/allocator.rs). Runs alternate between the two tools.
#
# Needs: a Rust toolchain; python3 with torch and segmentation_models_pytorch
#   (pip install torch segmentation-models-pytorch).
# Usage: bench/model.sh [WORKDIR]
#   env: ROUNDS (default 1), STEPS (default 5), WARMUP (default 2), SIZES (default "512 256"),
#        THREADS (default: number of cores), CARGO_TARGET_DIR (honoured).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-modelbench.XXXXXX)}
mkdir -p "$work"
rounds=${ROUNDS:-1}
steps=${STEPS:-5}
warmup=${WARMUP:-2}
sizes=${SIZES:-512 256}
threads=${THREADS:-$(nproc)}

python3 -c "import torch, segmentation_models_pytorch" 2>/dev/null || {
  echo "bench/model.sh needs PyTorch and SMP: pip install torch segmentation-models-pytorch" >&2
  exit 2
}
(cd "$repo" && cargo build --release --quiet -p covseg-stages --features model --example model_bench)
bench="${CARGO_TARGET_DIR:-$repo/target}/release/examples/model_bench"
reference="$repo/bench/model_reference.py"
echo "workdir: $work; $(nproc) cores, $threads threads; $(python3 -c 'import torch, segmentation_models_pytorch as smp; print("torch", torch.__version__, "smp", smp.__version__)')"

results="$work/results.jsonl"
: > "$results"
for round in $(seq "$rounds"); do
  for size in $sizes; do
    for mode in train infer; do
      RAYON_NUM_THREADS=$threads "$bench" --sizes "$size" --modes "$mode" --steps "$steps" \
        --warmup "$warmup" >> "$results"
      MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 \
        python3 "$reference" --threads "$threads" --sizes "$size" --modes "$mode" \
        --steps "$steps" --warmup "$warmup" >> "$results"
    done
  done
  echo "round $round of $rounds done (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def pick(tool, mode, size, key):
    values = [r[key] for r in rows if r["tool"] == tool and r["mode"] == mode and r["size"] == size]
    return statistics.median(values)
print()
print("| measurement | covseg (img/s) | PyTorch (img/s) | covseg / PyTorch | peak MiB covseg | peak MiB PyTorch |")
print("|---|---|---|---|---|---|")
for size in sorted({r["size"] for r in rows}, reverse=True):
    for mode, batch in (("train", 4), ("infer", 1)):
        ours, theirs = pick("covseg", mode, size, "images_per_s"), pick("pytorch", mode, size, "images_per_s")
        print(f"| {mode} {size}² batch {batch} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}× "
              f"| {pick('covseg', mode, size, 'peak_mib'):.0f} | {pick('pytorch', mode, size, 'peak_mib'):.0f} |")
print(f"\nraw results: {sys.argv[1]}")
PY
