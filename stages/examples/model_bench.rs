//! Throughput of covseg's U-Net (EfficientNet-B0 encoder, SMP layout, 1 input channel, 2 classes)
//! on Burn's CPU backend, for the side-by-side comparison with PyTorch in `bench/model.sh`.
//!
//! Usage: model_bench [--sizes 512,256] [--steps N] [--warmup N] [--modes train,infer]
//!                    [--encoder efficientnet-b0|efficientnet-lite0|plain] [--batch N]
//!
//! Training: batch 4 (or `--batch`), forward, BCE + soft Dice, backward, AdamW step. Inference:
//! batch 1 (or `--batch`), evaluation mode, no autodiff. Prints one JSON object per measurement,
//! like the reference.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use covseg_stages::model::{EncoderKind, UnetConfig};
use covseg_stages::training::{LossConfig, segmentation_loss};

struct Args {
    sizes: Vec<usize>,
    steps: usize,
    warmup: usize,
    modes: Vec<String>,
    encoder: EncoderKind,
    batch: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![512, 256],
        steps: 5,
        warmup: 2,
        modes: vec!["train".into(), "infer".into()],
        encoder: EncoderKind::EfficientNetB0,
        batch: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--sizes: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--steps" => args.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--batch" => args.batch = Some(value()?.parse().map_err(|e| format!("--batch: {e}"))?),
            "--warmup" => args.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--modes" => args.modes = value()?.split(',').map(str::to_owned).collect(),
            "--encoder" => {
                args.encoder = serde_json::from_value(serde_json::Value::String(value()?))
                    .map_err(|e| format!("--encoder: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bench_train(config: &UnetConfig, size: usize, batch: usize, steps: usize, warmup: usize) -> f64 {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = config.init(&device).expect("valid config");
    let mut optimizer: ModuleOptimizer = AdamWConfig::new().init();
    let x = Tensor::<4>::random(
        [batch, 1, size, size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y = Tensor::<4>::random(
        [batch, 2, size, size],
        Distribution::Uniform(0.0, 1.0),
        &device,
    )
    .greater_elem(0.9)
    .float();
    let loss = LossConfig::default();
    let mut run = |n: usize| {
        for _ in 0..n {
            let l = segmentation_loss(model.forward(x.clone()), y.clone(), &loss);
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optimizer.step(1e-3, model.clone(), grads);
        }
        // Flex is synchronous, but read one value so nothing is left pending.
        let _ = model.clone().valid();
    };
    run(warmup);
    let start = Instant::now();
    run(steps);
    (steps * batch) as f64 / start.elapsed().as_secs_f64()
}

fn bench_infer(config: &UnetConfig, size: usize, batch: usize, steps: usize, warmup: usize) -> f64 {
    let device = Device::flex();
    device.seed(0);
    let model = config.init(&device).expect("valid config");
    let x = Tensor::<4>::random(
        [batch, 1, size, size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let run = |n: usize| {
        for _ in 0..n {
            let out = model.forward(x.clone());
            let _ = out.into_data();
        }
    };
    run(warmup);
    let start = Instant::now();
    run(steps);
    (steps * batch) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    covseg_stages::allocator::keep_freed_memory();
    let args = parse().unwrap_or_else(|e| {
        eprintln!("model_bench: {e}");
        std::process::exit(2);
    });
    let config = UnetConfig {
        encoder: args.encoder,
        ..UnetConfig::default()
    };
    for &size in &args.sizes {
        for mode in &args.modes {
            let (ips, batch) = match mode.as_str() {
                "train" => {
                    let batch = args.batch.unwrap_or(4);
                    let ips = bench_train(&config, size, batch, args.steps, args.warmup);
                    (ips, batch)
                }
                "infer" => {
                    let batch = args.batch.unwrap_or(1);
                    let ips = bench_infer(&config, size, batch, args.steps, args.warmup);
                    (ips, batch)
                }
                other => {
                    eprintln!("model_bench: unknown mode {other}");
                    std::process::exit(2);
                }
            };
            println!(
                "{}",
                serde_json::json!({
                    "tool": "covseg",
                    "encoder": args.encoder,
                    "mode": mode,
                    "size": size,
                    "batch": batch,
                    "images_per_s": (ips * 1000.0).round() / 1000.0,
                    "peak_mib": (peak_mib() * 10.0).round() / 10.0,
                })
            );
        }
    }
}
