#!/usr/bin/env python3
"""Albumentations reference for bench/augment.sh: the ops, ranges and probabilities of covseg's
AugmentConfig (stages/src/augment/config.rs), applied to the same 512x512 slices.

Measured with albumentations==2.0.8, albucore==0.0.24, opencv-python-headless==5.0.0.93 and
numpy==2.4.6 (what `pip install albumentations==2.0.8` installed) on Python 3.11.

Usage: augment_reference.py IMAGES.npy SLICES [--all-on] [--procs N]
  IMAGES.npy holds (K, H, W) float32 images in [0, 1]; the labels are read from
  IMAGES_labels.npy next to it (both written by `augment_bench --write-npy`).
Prints one line of JSON with slices/s.

Each process runs OpenCV single-threaded, as each covseg worker thread is single-threaded, so
N processes compare with N threads. The op mapping, in covseg's order:

  covseg                            Albumentations
  rotation    p, ±max_degrees       Affine(rotate=±max_degrees)
  crop_scale  p, scale zoom range   Affine(scale=range, translate_percent=±half the free play)
  flip_h / flip_v                   HorizontalFlip / VerticalFlip
  elastic     p, alpha, sigma       ElasticTransform(alpha, sigma, noise_distribution="uniform")
  clahe       p, clip range, tiles  CLAHE(clip_limit=range, tile_grid_size=(tiles, tiles)); it
                                    runs OpenCV's 8-bit CLAHE between float->uint8->float casts
  noise       p, sigma range        GaussNoise(std_range=range)
  blur        p, sigma range        GaussianBlur(sigma_limit=range)
  brightness  p, factor range       MultiplicativeNoise(multiplier=range) (x * factor)
  contrast    p, factor range       RandomBrightnessContrast(contrast only); it multiplies about
                                    0, covseg about the mean (one more pass for the mean)
  gamma       p, range              RandomGamma(gamma_limit=100 * range)

Albumentations resamples once per geometric op (rotation, crop/scale, elastic each warp the
image), where covseg composes them into one map; that difference is the point of the benchmark.
"""

import argparse
import json
import os
import time

# Single-threaded numerics in every process, set before numpy and OpenCV load.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

# The defaults of covseg's AugmentConfig (stages/src/augment/config.rs); keep in sync.
DEFAULTS = {
    "rotation": {"p": 0.2, "max_degrees": 180.0},
    "crop_scale": {"p": 0.2, "scale": (0.7, 1.4)},
    "flip_horizontal": {"p": 0.5},
    "flip_vertical": {"p": 0.5},
    "elastic": {"p": 0.2, "alpha": 100.0, "sigma": 11.0},
    "clahe": {"p": 0.2, "clip_limit": (1.0, 4.0), "tiles": 8},
    "noise": {"p": 0.1, "sigma": (0.0, 0.05)},
    "blur": {"p": 0.2, "sigma": (0.5, 1.0)},
    "brightness": {"p": 0.15, "range": (0.75, 1.25)},
    "contrast": {"p": 0.15, "range": (0.75, 1.25)},
    "gamma": {"p": 0.3, "range": (0.7, 1.5)},
}


def pipeline(all_on):
    import albumentations as A
    import cv2

    cv2.setNumThreads(1)
    c = {op: dict(params) for op, params in DEFAULTS.items()}
    if all_on:
        for params in c.values():
            params["p"] = 1.0
    lo, hi = c["crop_scale"]["scale"]
    # covseg lets the zoom window move by up to half the free play |1 - 1/zoom| of the image.
    play = max(abs(1 - 1 / lo), abs(1 - 1 / hi)) / 2
    return A.Compose(
        [
            A.Affine(rotate=(-c["rotation"]["max_degrees"], c["rotation"]["max_degrees"]),
                     p=c["rotation"]["p"]),
            A.Affine(scale=(lo, hi), translate_percent=(-play, play), p=c["crop_scale"]["p"]),
            A.HorizontalFlip(p=c["flip_horizontal"]["p"]),
            A.VerticalFlip(p=c["flip_vertical"]["p"]),
            A.ElasticTransform(alpha=c["elastic"]["alpha"], sigma=c["elastic"]["sigma"],
                               noise_distribution="uniform", p=c["elastic"]["p"]),
            A.CLAHE(clip_limit=c["clahe"]["clip_limit"],
                    tile_grid_size=(c["clahe"]["tiles"], c["clahe"]["tiles"]), p=c["clahe"]["p"]),
            A.GaussNoise(std_range=c["noise"]["sigma"], p=c["noise"]["p"]),
            A.GaussianBlur(sigma_limit=c["blur"]["sigma"], blur_limit=0, p=c["blur"]["p"]),
            A.MultiplicativeNoise(multiplier=c["brightness"]["range"], per_channel=False,
                                  elementwise=False, p=c["brightness"]["p"]),
            A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0),
                                       contrast_limit=tuple(f - 1 for f in c["contrast"]["range"]),
                                       p=c["contrast"]["p"]),
            A.RandomGamma(gamma_limit=tuple(100 * g for g in c["gamma"]["range"]),
                          p=c["gamma"]["p"]),
        ],
        seed=0,
    )


# Per-process state for the pool workers.
STATE = {}


def init_worker(images_path, all_on, ready=None):
    images = np.load(images_path)
    labels = np.load(labels_path(images_path))
    transform = pipeline(all_on)
    transform.set_random_seed(os.getpid())
    STATE.update(images=images, labels=labels, transform=transform)
    # Warm up: the first calls build OpenCV kernels and fill numpy's caches.
    run_slices(range(8))
    if ready is not None:
        ready.wait()


def run_slices(indices):
    images, labels, transform = STATE["images"], STATE["labels"], STATE["transform"]
    checksum = 0.0
    for i in indices:
        k = i % len(images)
        out = transform(image=images[k], mask=labels[k])
        checksum += float(out["image"][0, 0]) + float(out["mask"][0, 0])
    return checksum


def labels_path(images_path):
    stem = images_path[:-4] if images_path.endswith(".npy") else images_path
    return stem + "_labels.npy"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images")
    parser.add_argument("slices", type=int, nargs="?", default=200)
    parser.add_argument("--all-on", action="store_true")
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()

    if args.procs == 1:
        init_worker(args.images, args.all_on)
        start = time.perf_counter()
        run_slices(range(args.slices))
        seconds = time.perf_counter() - start
    else:
        import multiprocessing as mp

        # Each worker gets an equal share of slices. Workers load the data, build the pipeline
        # and warm up in the pool initialiser, then meet the parent at a barrier; the clock
        # starts after it.
        shares = [range(w, args.slices, args.procs) for w in range(args.procs)]
        ctx = mp.get_context("fork")
        ready = ctx.Barrier(args.procs + 1)
        with ctx.Pool(args.procs, initializer=init_worker,
                      initargs=(args.images, args.all_on, ready)) as pool:
            result = pool.map_async(run_slices, shares, chunksize=1)
            ready.wait()
            start = time.perf_counter()
            result.get()
            seconds = time.perf_counter() - start

    import albumentations

    print(json.dumps({
        "impl": "albumentations " + albumentations.__version__,
        "config": "all-on" if args.all_on else "default",
        "threads": args.procs,
        "slices": args.slices,
        "seconds": seconds,
        "slices_per_s": args.slices / seconds,
    }))


if __name__ == "__main__":
    main()
