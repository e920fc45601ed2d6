#!/usr/bin/env bash
# Benchmark of covseg's cache, side by side with the reference tools on the same files:
#   1. hashing a 400 MiB file: `covseg hash` against b3sum (the reference blake3 tool) and a plain
#      read (cat), with the file in the page cache (warm) and evicted before each run (cold);
#   2. a 3-stage pipeline whose external inputs total about 1 GiB: the no-op rerun, the rerun after
#      `touch` of a 400 MiB input (same content), and the rerun after one param change, for covseg
#      and for DVC running the same stages through `covseg exec`.
#
# Needs: hyperfine, b3sum, vmtouch (Debian packages), dvc (pip install dvc), a release build.
# Usage: bench/cache.sh [WORKDIR]     (results: WORKDIR/*.md, printed at the end)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-bench.XXXXXX)}
mkdir -p "$work"
covseg="$repo/target/release/covseg"
[ -x "$covseg" ] || (cd "$repo" && cargo build --release --quiet)
for tool in hyperfine b3sum vmtouch dvc; do
  command -v "$tool" >/dev/null || { echo "bench/cache.sh needs $tool" >&2; exit 2; }
done
runs=${RUNS:-10}
echo "workdir: $work; $(nproc) cores; $(b3sum --version); $(dvc --version 2>/dev/null | head -1) (dvc)"

# 1. Hashing ------------------------------------------------------------------------------------
big="$work/big.bin"
[ -f "$big" ] || head -c 400M /dev/urandom > "$big"
hyperfine -N --warmup 3 --runs "$runs" --export-markdown "$work/hash-warm.md" \
  -n "b3sum" "b3sum $big" -n "covseg hash" "$covseg hash $big" -n "cat (plain read)" "cat $big"
hyperfine -N --runs "$runs" --prepare "vmtouch -qe $big" --export-markdown "$work/hash-cold.md" \
  -n "b3sum" "b3sum $big" -n "covseg hash" "$covseg hash $big" -n "cat (plain read)" "cat $big"

# 2. The pipeline -------------------------------------------------------------------------------
data="$work/pipe/data"
mkdir -p "$data"
if [ ! -f "$data/images_radiopedia.npy" ]; then
  # medseg: 200 × 512² float64 = 400 MiB images + 200 MiB masks; radiopedia: 136 slices = 408 MiB.
  "$covseg" synth --out "$data" --slices 200 --size 512 --seed 1 --prefix medseg >/dev/null
  "$covseg" synth --out "$data" --slices 136 --size 512 --seed 2 --prefix radiopedia >/dev/null
fi
du -ch "$data"/*.npy | tail -1

cd "$work/pipe"
echo 1 > pct
write_covseg() {
  cat > covseg.toml <<TOML
[pipeline]
seed = 42
[data]
root = "data"
files = { mi = "images_medseg.npy", mm = "masks_medseg.npy", ri = "images_radiopedia.npy", rm = "masks_radiopedia.npy" }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "data:mi", medseg_masks = "data:mm", radiopedia_images = "data:ri", radiopedia_masks = "data:rm" }

[[stage]]
name = "stats-train"
kind = "stats"
inputs = { images = "data:mi", masks = "data:mm", manifest = "@split.manifest" }
params = { part = "train" }

[[stage]]
name = "stats-radiopedia"
kind = "stats"
inputs = { images = "data:ri", masks = "data:rm" }
params = { percentiles = [50, $(cat pct)] }
TOML
  echo "pct: $(cat pct)" > params.yaml
}
write_covseg
cat > dvc.yaml <<YAML
stages:
  split:
    cmd: $covseg exec split -i medseg_images=data/images_medseg.npy -i medseg_masks=data/masks_medseg.npy -i radiopedia_images=data/images_radiopedia.npy -i radiopedia_masks=data/masks_radiopedia.npy --seed 42 --out out/split
    deps: [data/images_medseg.npy, data/masks_medseg.npy, data/images_radiopedia.npy, data/masks_radiopedia.npy]
    outs: [out/split/splits.json]
  stats-train:
    cmd: $covseg exec stats -i images=data/images_medseg.npy -i masks=data/masks_medseg.npy -i manifest=out/split/splits.json -P part=train --out out/stats-train
    deps: [data/images_medseg.npy, data/masks_medseg.npy, out/split/splits.json]
    outs: [out/stats-train/stats.json]
  stats-radiopedia:
    cmd: $covseg exec stats -i images=data/images_radiopedia.npy -i masks=data/masks_radiopedia.npy -P "percentiles=[50,\${pct}]" --out out/stats-radiopedia
    deps: [data/images_radiopedia.npy, data/masks_radiopedia.npy]
    params: [pct]
    outs: [out/stats-radiopedia/stats.json]
YAML
[ -d .dvc ] || dvc init --no-scm -q
dvc config core.analytics false
dvc config core.autostage false 2>/dev/null || true
"$covseg" -q run -p covseg.toml >/dev/null
dvc repro -q >/dev/null

# A fresh param value before each timed run, so neither tool can reuse an older result.
cat > bump.sh <<'SH'
#!/usr/bin/env bash
set -e
echo $(( $(cat pct) + 1 )) > pct
sed -i "s/percentiles = \[50, [0-9]*\]/percentiles = [50, $(cat pct)]/" covseg.toml
echo "pct: $(cat pct)" > params.yaml
SH
chmod +x bump.sh

hyperfine --warmup 2 --runs "$runs" --export-markdown "$work/noop.md" \
  -n "covseg run (no-op)" "$covseg -q run -p covseg.toml" -n "dvc repro (no-op)" "dvc repro -q"
hyperfine --runs "$runs" --prepare "touch data/images_medseg.npy" --export-markdown "$work/touch.md" \
  -n "covseg run (after touch)" "$covseg -q run -p covseg.toml" -n "dvc repro (after touch)" "dvc repro -q"
hyperfine --runs "$runs" --prepare "./bump.sh" --export-markdown "$work/param.md" \
  -n "covseg run (param change)" "$covseg -q run -p covseg.toml" -n "dvc repro (param change)" "dvc repro -q"

# The touch must not have rerun anything: the newest covseg run record says so.
"$covseg" -q run -p covseg.toml >/dev/null
touch data/images_medseg.npy
"$covseg" -q run -p covseg.toml | tail -1

echo
for f in hash-warm hash-cold noop touch param; do echo "## $f"; cat "$work/$f.md"; echo; done
