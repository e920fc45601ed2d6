#!/usr/bin/env bash
# Load test of `covseg serve` on loopback with Debian's `hey`, against predict's own throughput
# on the same bundle and slices. The bundle is the default EfficientNet-B0 U-Net at 512×512
# (weights from a one-epoch training on phantoms, which does not change the speed), as
# bench/predict.sh. Each request is one 512×512 HU slice as int16 .npy (512 KiB).
#
# For concurrency 1, 4 and 16 (REQUESTS requests each, within LIMIT_S seconds each):
#   throughput, p50/p99 latency of the 200s, p50 of the 503s, status codes;
#   serving overhead = 1 - (serve slices/s) / (predict's slices/s on the same bundle and slices:
#   batch 1 for one client, which never fills a batch; MAX_BATCH for the others);
#   the model's own seconds per slice inside the server (from /metrics) and the HTTP overhead
#   beyond it (1 - served slices/s × model s/slice): this VM's speed drifts by ±20 % between
#   minutes, and this column does not depend on it;
#   the slowest /ping answer, probed every 200 ms throughout.
# Fails when a status other than 200 or 503 appears, or /ping ever took 2 s or more.
#
# Usage: bench/serve.sh [WORKDIR]   env: REQUESTS (default 48; hey sends a multiple of the concurrency), LIMIT_S (default 120, per concurrency),
#        QUEUE (default 8), MAX_BATCH (default 4), CARGO_TARGET_DIR (honoured)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/covseg-servebench.XXXXXX)}
requests=${REQUESTS:-48}
limit=${LIMIT_S:-120}
queue=${QUEUE:-8}
max_batch=${MAX_BATCH:-4}
mkdir -p "$work"
command -v hey >/dev/null || { echo "bench/serve.sh needs hey (apt-get install hey)" >&2; exit 2; }
command -v curl >/dev/null || { echo "bench/serve.sh needs curl" >&2; exit 2; }
(cd "$repo" && cargo build --release --quiet)
target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
covseg="$target/release/covseg"

cat > "$work/pipeline.toml" <<TOML
[pipeline]
name = "serve-bench"
seed = 1
device = "cpu"
outputs = ""

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 8, size = 128 }

[[stage]]
name = "test"
kind = "synth"
params = { slices = 32, size = 512 }

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

[[stage]]
name = "predict-b1"
kind = "predict"
inputs = { bundle = "@train.bundle", images = "@test.images" }
params = { device = "cpu", batch_size = 1, overlays = 0 }

[[stage]]
name = "predict-b$max_batch"
kind = "predict"
inputs = { bundle = "@train.bundle", images = "@test.images" }
params = { device = "cpu", batch_size = $max_batch, overlays = 0 }
TOML
"$covseg" -q run -p "$work/pipeline.toml" --jobs 1 >/dev/null
# predict is timed in this run, beside the load test (a rerun of the script must not compare
# with an old, cached timing).
"$covseg" -q run -p "$work/pipeline.toml" --jobs 1 --force --stage predict-b1 --stage "predict-b$max_batch" >/dev/null
bundle=$("$covseg" show train.bundle -p "$work/pipeline.toml")
timing1=$("$covseg" show predict-b1.timing -p "$work/pipeline.toml")
timing_b=$("$covseg" show "predict-b$max_batch.timing" -p "$work/pipeline.toml")
images=$("$covseg" show test.images -p "$work/pipeline.toml")
python3 - "$images" "$work/slice.npy" <<'PY'
import sys, numpy as np
np.save(sys.argv[2], np.load(sys.argv[1])[0, :, :, 0].astype(np.int16))
PY

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$covseg" -q serve "$bundle" --port "$port" --queue "$queue" --max-batch "$max_batch" >"$work/serve.log" 2>&1 &
server=$!
pinger=""
trap 'kill $server 2>/dev/null || true; [ -z "$pinger" ] || kill $pinger 2>/dev/null || true' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  curl -fs -o /dev/null "$url/ping" && break
  sleep 0.1
done
curl -fs -o /dev/null "$url/ping" || { echo "the server never became ready:" >&2; cat "$work/serve.log" >&2; exit 1; }

# /ping every 200 ms while the load runs; one line per probe: seconds, status.
(while true; do
  curl -s -o /dev/null -m 10 -w '%{time_total} %{http_code}\n' "$url/ping" || echo "10 000"
  sleep 0.2
done) >"$work/ping.txt" &
pinger=$!

curl -fs "$url/metrics" >"$work/metrics-before.txt"
for c in 1 4 16; do
  timeout "$limit" hey -n "$requests" -c "$c" -t 70 -m POST -T application/x-npy \
    -D "$work/slice.npy" -o csv "$url/invocations" >"$work/hey-c$c.csv" ||
    { echo "hey at concurrency $c did not finish within ${limit} s" >&2; exit 1; }
  curl -fs "$url/metrics" >"$work/metrics-c$c.txt"
done
kill $pinger 2>/dev/null || true
pinger=""
kill -TERM $server
wait $server || { echo "covseg serve did not exit cleanly on SIGTERM:" >&2; cat "$work/serve.log" >&2; exit 1; }

python3 - "$work" "$timing1" "$timing_b" "$requests" "$max_batch" <<'PY'
import csv, json, sys
work, timing1, timing_b, requests, max_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rate = lambda path: 1 / json.load(open(path))["seconds_per_slice"]
predict = {1: rate(timing1), max_batch: rate(timing_b)}
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")
bad = False
for b, r in sorted(predict.items()):
    print(f"predict, batch {b}, same bundle and slices: {r:.2f} slices/s ({1000 / r:.0f} ms per slice)")
print()
def model_totals(path):
    # covseg_infer_seconds_sum (batches) and covseg_batch_size_sum (slices) of a /metrics text.
    values = {}
    for line in open(path):
        name, _, value = line.rpartition(" ")
        if name in ("covseg_infer_seconds_sum", "covseg_batch_size_sum"):
            values[name] = float(value)
    return values.get("covseg_infer_seconds_sum", 0.0), values.get("covseg_batch_size_sum", 0.0)
print("| concurrency | requests | 200 | 503 | other | 200/s | predict slices/s | overhead | serve's model s/slice | HTTP overhead | p50 200 (s) | p99 200 (s) | p50 503 (ms) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
previous = model_totals(f"{work}/metrics-before.txt")
for c in (1, 4, 16):
    rows = list(csv.DictReader(open(f"{work}/hey-c{c}.csv")))[:requests]
    ok = [float(r["response-time"]) for r in rows if r["status-code"] == "200"]
    rejected = [float(r["response-time"]) for r in rows if r["status-code"] == "503"]
    other = [r["status-code"] for r in rows if r["status-code"] not in ("200", "503")]
    # hey leaves failed connections (resets, timeouts) out of its CSV: count them as others.
    other += ["no answer"] * (requests - requests % c - len(rows)) if c <= requests else []
    if not rows:
        print(f"| {c} | 0 | 0 | 0 | {requests} | – | – | – | – | – | – | – | – |")
        bad = True
        continue
    start = min(float(r["offset"]) for r in rows)
    end = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    served = len(ok) / (end - start)
    # One client never fills a batch: compare it with predict at batch 1, the others at max batch.
    reference = predict[1 if c == 1 else max_batch]
    overhead = 1 - served / reference
    bad |= bool(other)
    now = model_totals(f"{work}/metrics-c{c}.txt")
    model = (now[0] - previous[0]) / max(now[1] - previous[1], 1)
    previous = now
    # What the HTTP side costs beyond the model's own time in this very run.
    http = 1 - served * model
    print(f"| {c} | {len(rows)} | {len(ok)} | {len(rejected)} | {len(other)} | {served:.2f} | {reference:.2f} | {100 * overhead:.0f} % | "
          f"{model:.3f} | {100 * http:.0f} % | "
          f"{pct(ok, 50):.3f} | {pct(ok, 99):.3f} | {1000 * pct(rejected, 50):.1f} |")
pings = [line.split() for line in open(f"{work}/ping.txt") if line.strip()]
slowest = max(float(t) for t, _ in pings)
codes = sorted({code for _, code in pings})
print()
print(f"/ping: {len(pings)} probes during the load, slowest {1000 * slowest:.0f} ms, codes {', '.join(codes)}")
if slowest >= 2 or codes != ["200"]:
    print("FAIL: /ping was slow or not 200", file=sys.stderr); bad = True
if bad:
    print("FAIL: a status other than 200 or 503", file=sys.stderr)
    sys.exit(1)
PY
