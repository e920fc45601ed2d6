#!/usr/bin/env bash
# covseg on a GPU, side by side with PyTorch CUDA on the same GPU: one prepared script for a
# machine with an NVIDIA GPU, no internet, and about ten minutes to run in.
#
#   1. builds covseg's model benchmark and the parity tests with the `wgpu` feature (Vulkan);
#   2. checks that the adapter is a real GPU and not a software rasteriser (llvmpipe, lavapipe,
#      SwiftShader): covseg asks wgpu for a *discrete* GPU only, and `vulkaninfo`, where installed,
#      must list one;
#   3. runs the PyTorch parity fixtures on the GPU, and the GPU-against-flex test (forward and every
#      gradient of the B0 U-Net, within 1e-3 of the largest value);
#   4. trains at 512², batch 16 (forward, BCE + Dice, backward, AdamW) and runs inference at 512²,
#      batch 16 and batch 1, reporting images/s;
#   5. runs the same with PyTorch + segmentation_models_pytorch on CUDA (pip torch);
#   6. prints one table.
#
# Needs: a Rust toolchain and a cargo registry cache (or vendored sources) for the wgpu build,
#   the Vulkan loader with NVIDIA's ICD (libvulkan1, the driver's nvidia_icd.json), ../shared (the
#   fixtures), python3 with torch (CUDA) and segmentation_models_pytorch for the reference.
# Usage: bench/gpu.sh [WORKDIR]
#   env: STEPS (default 10), WARMUP (default 3), BATCH (default 16), SIZE (default 512),
#        PYTHON (default python3), CARGO_TARGET_DIR (honoured), COVSEG_SHARED (default ../shared).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-gpubench.XXXXXX)}
mkdir -p "$work"
steps=${STEPS:-10}
warmup=${WARMUP:-3}
batch=${BATCH:-16}
size=${SIZE:-512}
python=${PYTHON:-python3}
target=${CARGO_TARGET_DIR:-$repo/target}
log="$work/gpu.log"
: > "$log"
say() { echo "$*" | tee -a "$log" >&2; }

say "== 1. build with wgpu (Vulkan)"
start=$(date +%s)
(cd "$repo" && cargo build --release --quiet -p covseg-stages --features model,wgpu --example model_bench)
(cd "$repo" && cargo test --release --quiet -p covseg-stages --features model,wgpu --test parity --no-run)
say "   built in $(( $(date +%s) - start )) s"
bench="$target/release/examples/model_bench"

say "== 2. the adapter"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log" >&2
else
  say "   nvidia-smi not found"
fi
if command -v vulkaninfo > /dev/null; then
  summary=$(vulkaninfo --summary 2> /dev/null || true)
  echo "$summary" | grep -E "deviceName|deviceType" | tee -a "$log" >&2 || true
  if ! echo "$summary" | grep -q "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU"; then
    say "   FAIL: Vulkan lists no discrete GPU (only a software or integrated adapter); install the NVIDIA Vulkan ICD"
    exit 1
  fi
else
  say "   vulkaninfo not installed; relying on covseg's own check (discrete GPUs only)"
fi
# model_bench asks for DeviceKind::DiscreteGpu(0) and checks a small sum on it before anything
# else; a software adapter is never discrete, so it fails here, naming the reason.
"$bench" --device wgpu --probe | tee -a "$log" >&2

say "== 3. parity on the GPU"
COVSEG_PARITY_DEVICE=wgpu COVSEG_PARITY_TOLERANCE=1e-3 \
  cargo test --release --quiet --manifest-path "$repo/Cargo.toml" -p covseg-stages \
  --features model,wgpu --test parity 2>&1 | tee -a "$log" | grep -E "^test |test result" >&2

say "== 4. covseg on the GPU"
results="$work/results.jsonl"
: > "$results"
"$bench" --device wgpu --sizes "$size" --modes train --batch "$batch" --steps "$steps" --warmup "$warmup" >> "$results"
"$bench" --device wgpu --sizes "$size" --modes infer --batch "$batch" --steps "$steps" --warmup "$warmup" >> "$results"
"$bench" --device wgpu --sizes "$size" --modes infer --batch 1 --steps "$steps" --warmup "$warmup" >> "$results"

say "== 5. PyTorch on CUDA"
if "$python" -c "import torch, segmentation_models_pytorch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  for args in "train $batch" "infer $batch" "infer 1"; do
    set -- $args
    "$python" "$repo/bench/model_reference.py" --device cuda --sizes "$size" --modes "$1" --batch "$2" \
      --steps "$steps" --warmup "$warmup" >> "$results"
  done
else
  say "   PyTorch with CUDA and segmentation_models_pytorch are not importable by $python: reference skipped"
fi

say "== 6. results"
"$python" - "$results" <<'PY' | tee -a "$log"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def find(tool, mode, batch):
    return next((r for r in rows if r["tool"] == tool and r["mode"] == mode and r["batch"] == batch), None)
print("| measurement | covseg wgpu (img/s) | PyTorch CUDA (img/s) | covseg / PyTorch | peak MiB covseg (host) |")
print("|---|---|---|---|---|")
for r in [r for r in rows if r["tool"] == "covseg"]:
    theirs = find("pytorch", r["mode"], r["batch"])
    t = f"{theirs['images_per_s']:.2f}" if theirs else "—"
    ratio = f"{r['images_per_s'] / theirs['images_per_s']:.2f}×" if theirs else "—"
    print(f"| {r['mode']} {r['size']}² batch {r['batch']} | {r['images_per_s']:.2f} | {t} | {ratio} | {r['peak_mib']:.0f} |")
print(f"\nraw results: {sys.argv[1]}; log: {sys.argv[1].rsplit('/', 1)[0]}/gpu.log")
PY
