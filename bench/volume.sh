#!/usr/bin/env bash
# Time to segment one CT volume of 100 slices of 512×512 (0.68 mm pixels, 5 mm slices) with the
# default EfficientNet-B0 U-Net, from a DICOM series and from a .nii.gz: reading, the network
# (batch 4, no TTA), mapping back, the lung mask, the report and writing the label NIfTI. The
# bundle's weights come from a one-step training on phantom volumes, which does not change the
# speed. Printed per input: the stage's wall time (covseg's own line) and predict's timing.json
# (network seconds per slice, whole-stage seconds).
#
# Usage: bench/volume.sh [WORKDIR]
# env: PROFILE (release; `dev` uses the test build, whose domain crate and dependencies are
#      optimised at opt-level 3 too), PIXEL_MM (0.7; empty: resize slices to 512 instead),
#      CARGO_TARGET_DIR (honoured)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-volumebench.XXXXXX)}
profile=${PROFILE:-release}
pixel_mm=${PIXEL_MM-0.7}
mkdir -p "$work"
(cd "$repo" && cargo build --profile "$profile" --quiet)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
dir=$profile
[ "$profile" = dev ] && dir=debug
covseg="$target/$dir/covseg"
spacing=""
[ -n "$pixel_mm" ] && spacing=", pixel_mm = $pixel_mm"

cat > "$work/pipeline.toml" <<TOML
[pipeline]
name = "volume-bench"
seed = 1
device = "cpu"

[[stage]]
name = "train-scans"
kind = "synth-volumes"
params = { volumes = 2, slices = 4, size = 512 }

[[stage]]
name = "scan"
kind = "synth-volumes"
params = { volumes = 1, first = 100, slices = 100, size = 512 }

[[stage]]
name = "split"
kind = "split"
inputs = { volumes = "@train-scans.nifti", volume_labels = "@train-scans.labels" }
params = { folds = 1, val_fraction = 0.5, size = 512$spacing, label_map = { background = 0, ggo = 1, consolidation = 2, lung = 3 } }

[[stage]]
name = "augment"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
params = { copies = 1 }

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", preprocessing = "@split.preprocessing" }
params = { epochs = 1, batch_size = 2, max_train_slices_per_epoch = 2, device = "cpu" }

[[stage]]
name = "predict-dicom"
kind = "predict"
inputs = { bundle = "@train.bundle", volumes = "@scan.dicom" }
params = { device = "cpu", batch_size = 4, overlays = 0 }

[[stage]]
name = "predict-nifti"
kind = "predict"
inputs = { bundle = "@train.bundle", volumes = "@scan.nifti" }
params = { device = "cpu", batch_size = 4, overlays = 0 }
TOML

# One stage at a time, so each predict has the whole machine.
"$covseg" -q run -p "$work/pipeline.toml" --jobs 1 | tee "$work/run.txt" | grep -E '^predict' || true
printf '%-14s %8s %12s %14s\n' input slices "net s/slice" "stage seconds"
for input in dicom nifti; do
  timing="$("$covseg" show "predict-$input.timing" -p "$work/pipeline.toml")"
  python3 - "$timing" "$input" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<14} {t['slices']:>8} {t['seconds_per_slice']:>12.3f} {t['total_seconds']:>14.1f}")
PY
done
