//! Throughput of covseg's U-Net (EfficientNet-B0 encoder, SMP layout, 1 input channel, 2 classes)
//! on Burn's CPU backend, for the side-by-side comparison with PyTorch in `bench/model.sh`.
//!
//! Usage: model_bench [--sizes 512,256] [--steps N] [--warmup N] [--modes train,infer]
//!                    [--encoder efficientnet-b0|efficientnet-lite0|plain] [--batch N]
//!                    [--device cpu|wgpu|cuda|auto] [--probe]
//!
//! `--device` takes covseg's device choices (GPUs need a build with their feature); `--probe`
//! prints the device it resolved to and exits, 1 when that is not the one asked for.
//! Training: batch 4 (or `--batch`), forward, BCE + soft Dice, backward, AdamW step. Inference:
//! batch 1 (or `--batch`), evaluation mode, no autodiff. Prints one JSON object per measurement,
//! like the reference.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use covseg_stages::model::{EncoderKind, UnetConfig};
use covseg_stages::training::{DeviceChoice, LossConfig, segmentation_loss, select_device};

struct Args {
    sizes: Vec<usize>,
    steps: usize,
    warmup: usize,
    modes: Vec<String>,
    encoder: EncoderKind,
    batch: Option<usize>,
    device: DeviceChoice,
    probe: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![512, 256],
        steps: 5,
        warmup: 2,
        modes: vec!["train".into(), "infer".into()],
        encoder: EncoderKind::EfficientNetB0,
        batch: None,
        device: DeviceChoice::Cpu,
        probe: false,
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
            "--probe" => args.probe = true,
            "--device" => {
                args.device = serde_json::from_value(serde_json::Value::String(value()?))
                    .map_err(|e| format!("--device: {e}"))?
            }
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

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat`, whose
/// times are in USER_HZ ticks: 100 per second on every Linux ABI.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
            Some((ticks(11)? + ticks(12)?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Images per second and the cores kept busy on average (CPU seconds / wall seconds) over
/// `steps` calls of `step` after `warmup`.
fn measure(steps: usize, warmup: usize, images: usize, mut step: impl FnMut(usize)) -> (f64, f64) {
    step(warmup);
    let (start, cpu) = (Instant::now(), cpu_seconds());
    step(steps);
    let wall = start.elapsed().as_secs_f64();
    ((steps * images) as f64 / wall, (cpu_seconds() - cpu) / wall)
}

fn bench_train(
    config: &UnetConfig,
    device: &Device,
    size: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> (f64, f64) {
    let device = device.clone().autodiff();
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
    let run = |n: usize| {
        let mut last = None;
        for _ in 0..n {
            let l = segmentation_loss(model.forward(x.clone()), y.clone(), &loss);
            last = Some(l.clone().detach());
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optimizer.step(1e-3, model.clone(), grads);
        }
        // A GPU queues work: reading the last loss waits for it (all but the last optimizer
        // update; flex is synchronous anyway).
        if let Some(l) = last {
            let _ = l.into_scalar::<f32>();
        }
    };
    measure(steps, warmup, batch, run)
}

fn bench_infer(
    config: &UnetConfig,
    device: &Device,
    size: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> (f64, f64) {
    let device = device.clone();
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
    measure(steps, warmup, batch, run)
}

fn main() {
    covseg_stages::allocator::keep_freed_memory();
    let args = parse().unwrap_or_else(|e| {
        eprintln!("model_bench: {e}");
        std::process::exit(2);
    });
    let device = select_device(args.device).unwrap_or_else(|e| {
        eprintln!("model_bench: {e}");
        std::process::exit(1);
    });
    if args.probe {
        println!(
            "{}",
            serde_json::json!({ "asked": args.device, "device": device.name, "gpu": device.gpu })
        );
        let wanted_gpu = matches!(args.device, DeviceChoice::Wgpu | DeviceChoice::Cuda);
        std::process::exit(if wanted_gpu && !device.gpu { 1 } else { 0 });
    }
    let device = device.device;
    let config = UnetConfig {
        encoder: args.encoder,
        ..UnetConfig::default()
    };
    for &size in &args.sizes {
        for mode in &args.modes {
            let ((ips, cores), batch) = match mode.as_str() {
                "train" => {
                    let batch = args.batch.unwrap_or(4);
                    let ips = bench_train(&config, &device, size, batch, args.steps, args.warmup);
                    (ips, batch)
                }
                "infer" => {
                    let batch = args.batch.unwrap_or(1);
                    let ips = bench_infer(&config, &device, size, batch, args.steps, args.warmup);
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
                    "device": args.device,
                    "mode": mode,
                    "size": size,
                    "batch": batch,
                    "images_per_s": (ips * 1000.0).round() / 1000.0,
                    "peak_mib": (peak_mib() * 10.0).round() / 10.0,
                    "cores_busy": (cores * 100.0).round() / 100.0,
                })
            );
        }
    }
}
