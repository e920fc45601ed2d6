//! Throughput of `covseg_stages::augment` on 512×512 phantom slices in the lung window, for the
//! side-by-side comparison with Albumentations in `bench/augment.sh`.
//!
//! Usage: augment_bench [SLICES] [--all-on | --only OP] [--threads N] [--distinct K] [--size S]
//!                      [--seed N] [--write-npy PATH]
//!
//! Prints one line of JSON with slices/s. `--write-npy PATH` also writes the distinct input slices,
//! `(K, S, S)` f32 images to PATH and u8 labels next to it (`*_labels.npy`), for the reference.

use std::path::{Path, PathBuf};
use std::time::Instant;

use covseg_stages::NoProgress;
use covseg_stages::augment::{AugmentConfig, augment};
use covseg_stages::data::phantom::{self, PhantomConfig};
use ndarray::{Array3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The lung window used throughout covseg's benchmarks: HU −1350…150 onto [0, 1].
const WINDOW_LOW: f64 = -1350.0;
const WINDOW_WIDTH: f64 = 1500.0;

struct Args {
    slices: usize,
    mode: Mode,
    threads: usize,
    distinct: usize,
    size: usize,
    seed: u64,
    write_npy: Option<PathBuf>,
}

enum Mode {
    Default,
    AllOn,
    /// Every op off except the named one, at p = 1: the cost of one op.
    Only(String),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse(std::env::args().skip(1))?;
    let config = match &args.mode {
        Mode::Default => AugmentConfig::default(),
        Mode::AllOn => AugmentConfig::default().all_on(),
        Mode::Only(op) => only(op)?,
    };
    config.validate()?;

    let (images, labels) = slices(args.distinct, args.size, args.seed)?;
    if let Some(path) = &args.write_npy {
        write_npy(path, &images, &labels)?;
    }

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let run = |count: usize, offset: usize| {
        pool.install(|| {
            (0..count)
                .into_par_iter()
                .map(|i| {
                    let k = (offset + i) % args.distinct;
                    let image = images.index_axis(Axis(0), k).insert_axis(Axis(0));
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(args.seed.wrapping_add((offset + i) as u64));
                    let (out, out_labels) =
                        augment(image, labels.index_axis(Axis(0), k), &config, &mut rng);
                    // Touch the results so the work cannot be skipped.
                    f64::from(out[[0, 0, 0]]) + f64::from(out_labels[[0, 0]])
                })
                .sum::<f64>()
        })
    };

    run(args.slices.div_ceil(10).max(2 * args.threads), 0);
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let checksum = run(args.slices, 1_000_000);
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a);

    let config_name = match &args.mode {
        Mode::Default => "default".to_string(),
        Mode::AllOn => "all-on".to_string(),
        Mode::Only(op) => format!("only-{op}"),
    };
    println!(
        "{}",
        serde_json::json!({
            "impl": "covseg",
            "config": config_name,
            "threads": args.threads,
            "slices": args.slices,
            "size": args.size,
            "seconds": seconds,
            "slices_per_s": args.slices as f64 / seconds,
            "cpu_seconds": cpu,
            "checksum": checksum,
        })
    );
    Ok(())
}

/// User plus system CPU time of this process so far (Linux), which other load on the machine
/// distorts less than wall time; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces, so count fields from the closing parenthesis.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // Fields 14 and 15 of proc(5) (utime, stime), in clock ticks of 1/100 s on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        slices: 200,
        mode: Mode::Default,
        threads: 1,
        distinct: 16,
        size: 512,
        seed: 0,
        write_npy: None,
    };
    let number = |flag: &str, value: Option<String>| -> Result<usize, String> {
        let value = value.ok_or(format!("{flag} needs a value"))?;
        value
            .parse()
            .map_err(|_| format!("{flag}: expected a number, got {value}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--all-on" => args.mode = Mode::AllOn,
            "--only" => args.mode = Mode::Only(it.next().ok_or("--only needs an op name")?),
            "--threads" => args.threads = number("--threads", it.next())?.max(1),
            "--distinct" => args.distinct = number("--distinct", it.next())?.max(1),
            "--size" => args.size = number("--size", it.next())?,
            "--seed" => args.seed = number("--seed", it.next())? as u64,
            "--write-npy" => {
                args.write_npy = Some(it.next().ok_or("--write-npy needs a path")?.into())
            }
            "-h" | "--help" => {
                return Err(
                    "usage: augment_bench [SLICES] [--all-on | --only OP] [--threads N] \
                     [--distinct K] [--size S] [--seed N] [--write-npy PATH]"
                        .into(),
                );
            }
            other => {
                args.slices = other
                    .parse()
                    .map_err(|_| format!("unknown argument {other}"))?;
            }
        }
    }
    Ok(args)
}

fn only(op: &str) -> Result<AugmentConfig, String> {
    let mut config = AugmentConfig::default().all_off();
    let p = match op {
        "rotation" => &mut config.rotation.p,
        "crop_scale" => &mut config.crop_scale.p,
        "flip_horizontal" => &mut config.flip_horizontal.p,
        "flip_vertical" => &mut config.flip_vertical.p,
        "elastic" => &mut config.elastic.p,
        "clahe" => &mut config.clahe.p,
        "noise" => &mut config.noise.p,
        "blur" => &mut config.blur.p,
        "brightness" => &mut config.brightness.p,
        "contrast" => &mut config.contrast.p,
        "gamma" => &mut config.gamma.p,
        "none" => return Ok(config),
        other => return Err(format!("unknown op {other}")),
    };
    *p = 1.0;
    Ok(config)
}

/// `distinct` phantoms in the lung window, `(K, S, S)`, and their class maps (0 background,
/// 1 GGO, 2 consolidation, 3 other lung).
fn slices(
    distinct: usize,
    size: usize,
    seed: u64,
) -> Result<(Array3<f32>, Array3<u8>), Box<dyn std::error::Error>> {
    let config = PhantomConfig {
        slices: distinct,
        size,
        ..PhantomConfig::default()
    };
    let set = phantom::generate(&config, seed, &NoProgress)?;
    let images = set
        .images
        .index_axis(Axis(3), 0)
        .mapv(|hu| ((hu - WINDOW_LOW) / WINDOW_WIDTH).clamp(0.0, 1.0) as f32);
    // Phantom mask channels: GGO, consolidation, other lung, background.
    const CLASS_OF_CHANNEL: [u8; 4] = [1, 2, 3, 0];
    let labels = set.masks.map_axis(Axis(3), |onehot| {
        onehot
            .iter()
            .position(|&on| on)
            .map_or(0, |c| CLASS_OF_CHANNEL[c])
    });
    Ok((images, labels))
}

fn write_npy(
    path: &Path,
    images: &Array3<f32>,
    labels: &Array3<u8>,
) -> Result<(), Box<dyn std::error::Error>> {
    let stem = path.with_extension("");
    let labels_path = PathBuf::from(format!("{}_labels.npy", stem.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    ndarray_npy::write_npy(path, images).map_err(|e| format!("{}: {e}", path.display()))?;
    ndarray_npy::write_npy(&labels_path, labels)
        .map_err(|e| format!("{}: {e}", labels_path.display()))?;
    Ok(())
}
