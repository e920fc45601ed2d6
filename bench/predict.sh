#!/usr/bin/env bash
# Speed of the predict stage at 512×512: slices per second for the Kaggle test layout (10 slices of
# 512×512 HU), with tta = none, flip2 and flip4, for an EfficientNet-B0 U-Net bundle (the default
# model; its weights come from a one-epoch training on phantoms, which does not change the
# speed). The time is predict's own timing.json: preprocessing, the network, TTA, resizing and
# thresholding, without process start and file reading.
#
# The network alone against PyTorch is bench/model.sh (inference 512², batch 1).
# Usage: bench/predict.sh [WORKDIR]    env: BATCH (default 4), CARGO_TARGET_DIR (honoured)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-predictbench.XXXXXX)}
batch=${BATCH:-4}
mkdir -p "$work"
(cd "$repo" && cargo build --release --quiet)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
covseg="$target/release/covseg"

cat > "$work/pipeline.toml" <<TOML
[pipeline]
name = "predict-bench"
seed = 1
device = "cpu"

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 8, size = 128 }

[[stage]]
name = "test"
kind = "synth"
params = { slices = 10, size = 512 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }
params = { folds = 1, val_fraction = 0.25, size = 512 }

[[stage]]
name = "augment"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
params = { copies = 1 }

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 1, batch_size = 2, max_train_slices_per_epoch = 2, device = "cpu" }
TOML
for tta in none flip2 flip4; do
  cat >> "$work/pipeline.toml" <<TOML

[[stage]]
name = "predict-$tta"
kind = "predict"
inputs = { bundle = "@train.bundle", images = "@test.images" }
params = { device = "cpu", tta = "$tta", batch_size = $batch }
TOML
done

# One predict stage at a time, so each has the whole machine.
"$covseg" -q run -p "$work/pipeline.toml" --jobs 1 >/dev/null
printf '%-6s %8s %10s %12s\n' tta slices "s/slice" "slices/s"
for tta in none flip2 flip4; do
  timing=$(find "$work/cache/objects" -path "*/out/timing.json" -exec grep -l "\"tta\": \"$tta\"" {} + | head -1)
  python3 - "$timing" "$tta" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<6} {t['slices']:>8} {t['seconds_per_slice']:>10.3f} {1 / t['seconds_per_slice']:>12.2f}")
PY
done
