#!/usr/bin/env bash
# Speed of covseg's U-Net side by side with PyTorch: segmentation_models_pytorch's
# Unet("efficientnet-b0", encoder_weights=None, in_channels=1, classes=2) against covseg's
# UnetConfig::default() (the same network, SMP layout), both on this machine's CPU.
#   training:  batch 4 — forward, BCE + soft Dice, backward, AdamW step (images/s)
#   inference: batch 1, evaluation mode, no autograd (images/s)
# at 512×512 and 256×256, with each process's peak resident memory; and the two runs users make
# most: EfficientNet-Lite0 U-Net training at 352², batch 8 (SMP's tu-tf_efficientnet_lite0), and
# the predict stage's network pass at 512², batch 4, no TTA (bench/predict.sh times the whole
# stage).
#
# Fair protocol: PyTorch with torch.set_num_threads(THREADS) and glibc's mmap/trim thresholds
# raised (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_, else glibc unmaps every tensor over
# 32 MiB at each step); covseg with a rayon pool of THREADS and the same thresholds, which the
# covseg binary sets itself (stages/src/allocator.rs). Runs alternate between the two tools.
#
# Needs: a Rust toolchain; python3 with torch and segmentation_models_pytorch
#   (pip install torch segmentation-models-pytorch).
# Usage: bench/model.sh [WORKDIR]
#   env: ROUNDS (default 1), STEPS (default 5), WARMUP (default 2), ROWS (default: all rows, as
#        "encoder:size:mode:batch" words), THREADS (default: number of cores), PYTHON (default
#        python3), PROFILE (cargo profile, default release; release-lto for LTO and one codegen
#        unit), CARGO_TARGET_DIR (honoured).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-modelbench.XXXXXX)}
mkdir -p "$work"
rounds=${ROUNDS:-1}
steps=${STEPS:-5}
warmup=${WARMUP:-2}
rows=${ROWS:-efficientnet-b0:512:train:4 efficientnet-b0:512:infer:1 efficientnet-b0:256:train:4 efficientnet-b0:256:infer:1 efficientnet-lite0:352:train:8 efficientnet-b0:512:infer:4}
python=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}

"$python" -c "import torch, segmentation_models_pytorch" 2>/dev/null || {
  echo "bench/model.sh needs PyTorch and SMP: pip install torch segmentation-models-pytorch" >&2
  exit 2
}
profile=${PROFILE:-release}
(cd "$repo" && cargo build --profile "$profile" --quiet -p covseg-stages --features model --example model_bench)
bench="${CARGO_TARGET_DIR:-$repo/target}/$profile/examples/model_bench"
reference="$repo/bench/model_reference.py"
echo "workdir: $work; $(nproc) cores, $threads threads; $("$python" -c 'import torch, segmentation_models_pytorch as smp; print("torch", torch.__version__, "smp", smp.__version__)')"

results="$work/results.jsonl"
: > "$results"
for round in $(seq "$rounds"); do
  for row in $rows; do
    IFS=: read -r encoder size mode batch <<< "$row"
    RAYON_NUM_THREADS=$threads "$bench" --encoder "$encoder" --sizes "$size" --modes "$mode" --batch "$batch" \
      --steps "$steps" --warmup "$warmup" >> "$results"
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000 \
      "$python" "$reference" --threads "$threads" --encoder "$encoder" --sizes "$size" \
      --modes "$mode" --batch "$batch" --steps "$steps" --warmup "$warmup" >> "$results"
  done
  echo "round $round of $rounds done (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

"$python" - "$results" "$rows" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
words = sys.argv[2].split()
def pick(tool, encoder, mode, size, batch, key):
    values = [r[key] for r in rows if r["tool"] == tool and r["encoder"] == encoder
              and r["mode"] == mode and r["size"] == size and r["batch"] == batch]
    return statistics.median(values)
print()
# Cores busy: CPU seconds / wall seconds of the timed steps (all threads; warm-up excluded).
print("| measurement | covseg (img/s) | PyTorch (img/s) | covseg / PyTorch | peak MiB covseg | peak MiB PyTorch | cores busy covseg | cores busy PyTorch |")
print("|---|---|---|---|---|---|---|---|")
for word in words:
    encoder, size, mode, batch = word.split(":")
    size, batch = int(size), int(batch)
    ours = pick("covseg", encoder, mode, size, batch, "images_per_s")
    theirs = pick("pytorch", encoder, mode, size, batch, "images_per_s")
    name = {"efficientnet-b0": "B0", "efficientnet-lite0": "Lite0"}.get(encoder, encoder)
    print(f"| {name} {mode} {size}² batch {batch} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}× "
          f"| {pick('covseg', encoder, mode, size, batch, 'peak_mib'):.0f} "
          f"| {pick('pytorch', encoder, mode, size, batch, 'peak_mib'):.0f} "
          f"| {pick('covseg', encoder, mode, size, batch, 'cores_busy'):.2f} "
          f"| {pick('pytorch', encoder, mode, size, batch, 'cores_busy'):.2f} |")
print(f"\nraw results: {sys.argv[1]}")
PY
