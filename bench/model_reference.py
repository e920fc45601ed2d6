#!/usr/bin/env python3
"""The PyTorch reference for covseg's model benchmark: segmentation_models_pytorch's
Unet("efficientnet-b0", encoder_weights=None, in_channels=1, classes=2) on the CPU.

Measures training images/s (batch 4: forward, BCE + soft Dice, backward, AdamW step) and inference
images/s (batch 1, no grad, eval mode) at 512x512 and 256x256, and the process's peak memory.
Prints one JSON object per measurement. Fair protocol (see bench/model.sh): torch.set_num_threads
equal to the cores used by covseg, and MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ raised so
glibc does not unmap large tensors at every step.

Versions used for the published numbers: torch 2.15.0 (CPU), segmentation_models_pytorch 0.6.0.
"""
import argparse
import json
import resource
import time

import torch
import segmentation_models_pytorch as smp


def loss_fn(logits, target):
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    return bce + dice.mean()


# covseg's encoder names and the SMP encoders with the same network.
ENCODERS = {"efficientnet-b0": "efficientnet-b0", "efficientnet-lite0": "tu-tf_efficientnet_lite0"}


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(size, batch, train, steps, warmup, model, device):
    x = torch.randn(batch, 1, size, size, device=device)
    y = (torch.rand(batch, 2, size, size, device=device) > 0.9).float()
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        model.eval()

    def step():
        if train:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x)

    for _ in range(warmup):
        step()
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    # process_time covers every thread of the process: the cores kept busy on average.
    return steps * batch / elapsed, (time.process_time() - cpu) / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    ap.add_argument("--batch", type=int, default=None, help="default: 4 for training, 1 for inference")
    ap.add_argument("--encoder", default="efficientnet-b0", choices=sorted(ENCODERS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = smp.Unet(ENCODERS[args.encoder], encoder_weights=None, in_channels=1, classes=2).to(device)
    for size in args.sizes:
        for train, default_batch in ((True, 4), (False, 1)):
            if ("train" if train else "infer") not in args.modes:
                continue
            batch = args.batch or default_batch
            ips, cores = bench(size, batch, train, args.steps, args.warmup, model, device)
            print(json.dumps({"tool": "pytorch", "encoder": args.encoder, "mode": "train" if train else "infer", "size": size,
                              "batch": batch, "images_per_s": round(ips, 3), "peak_mib": round(peak_mib(), 1),
                              "cores_busy": round(cores, 2), "device": args.device}),
                  flush=True)


if __name__ == "__main__":
    main()
