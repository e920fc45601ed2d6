//! Synthetic axial lung CT slices ("phantoms") with lesion masks in the Kaggle format: the built-in
//! demo and test data, deterministic per (seed, slice index) so every run reproduces byte for byte.
//! [`generate_volume`] stacks slices of one patient into a CT volume with lesions continuous in z.

use ndarray::{Array2, Array3, Array4};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Progress, Result};

const MIN_SIZE: usize = 64;
const MAX_SIZE: usize = 512;
const MAX_SLICES: usize = 100_000;

// Mask channels, in the order of the Kaggle `masks_medseg.npy` files.
const GGO: u8 = 0;
const CONSOLIDATION: u8 = 1;
const OTHER_LUNG: u8 = 2;
const BACKGROUND: u8 = 3;
const CHANNELS: usize = 4;

// What a pixel is before lesions are added; overlays (bones, heart) only ever paint `BODY`, so the
// lung masks stay exactly the lung shapes whatever overlaps them.
const OUTSIDE: u8 = 0;
const BODY: u8 = 1;
const LUNG: u8 = 2;

// The usual CT storage range; noise must not push air below what a scanner can write.
const MIN_HU: f32 = -1024.0;
const MAX_HU: f32 = 3071.0;
const AIR_HU: f32 = -1000.0;
const VESSEL_HU: f32 = 40.0;

/// Lowest lesion threshold on the summed blob field: below it a patch would grow out to the
/// square bounding boxes the blobs are evaluated in.
const LESION_FLOOR: f32 = 0.25;

/// How the phantom data set is made; `[params]` of the phantom stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Number of slices.
    pub slices: usize,
    /// Width and height of a slice in pixels.
    pub size: usize,
    /// Share of slices drawn without any lesion, as in real data where many slices are clean.
    pub lesion_free_fraction: f64,
    /// Standard deviation of the additive Gaussian noise, in HU.
    pub noise_hu: f64,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            slices: 16,
            size: 128,
            lesion_free_fraction: 0.15,
            noise_hu: 20.0,
        }
    }
}

impl PhantomConfig {
    /// Rejects sizes and values the generator cannot honour, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(Error::invalid_param(
                "size",
                format!("expected {MIN_SIZE}…{MAX_SIZE}, got {}", self.size),
            ));
        }
        if self.slices == 0 || self.slices > MAX_SLICES {
            return Err(Error::invalid_param(
                "slices",
                format!("expected 1…{MAX_SLICES}, got {}", self.slices),
            ));
        }
        if !(0.0..=1.0).contains(&self.lesion_free_fraction) {
            return Err(Error::invalid_param(
                "lesion_free_fraction",
                format!(
                    "expected a fraction in 0…1, got {}",
                    self.lesion_free_fraction
                ),
            ));
        }
        if !(self.noise_hu.is_finite() && self.noise_hu >= 0.0) {
            return Err(Error::invalid_param(
                "noise_hu",
                format!("expected a finite number ≥ 0, got {}", self.noise_hu),
            ));
        }
        Ok(())
    }
}

/// A phantom data set in the Kaggle layout.
#[derive(Debug, Clone)]
pub struct PhantomSet {
    /// `(N, S, S, 1)`, Hounsfield units.
    pub images: Array4<f64>,
    /// `(N, S, S, 4)`: ground glass, consolidation, other lung, background; one-hot per pixel.
    pub masks: Array4<bool>,
}

/// Generates `config.slices` phantoms in parallel; slice `i` equals `generate_slice(config, seed, i)`.
pub fn generate(config: &PhantomConfig, seed: u64, progress: &dyn Progress) -> Result<PhantomSet> {
    config.validate()?;
    let (n, s) = (config.slices, config.size);
    let pixels = s * s;
    let too_large = || {
        Error::invalid_param(
            "slices",
            format!("{n} slices of {s}×{s} do not fit in memory"),
        )
    };
    let total = n.checked_mul(pixels).ok_or_else(too_large)?;
    let total_mask = total.checked_mul(CHANNELS).ok_or_else(too_large)?;

    progress.start(n as u64, "slices");
    // Each slice renders straight into its part of the output, so peak memory stays one data set.
    let mut images = vec![0.0f64; total];
    let mut masks = vec![false; total_mask];
    images
        .par_chunks_mut(pixels)
        .zip(masks.par_chunks_mut(pixels * CHANNELS))
        .enumerate()
        .for_each(|(index, (image, mask))| {
            render(config, seed, index).write_into(image, mask);
            progress.advance(1);
        });

    let shape_error = |e: ndarray::ShapeError| Error::invalid_param("slices", e.to_string());
    Ok(PhantomSet {
        images: Array4::from_shape_vec((n, s, s, 1), images).map_err(shape_error)?,
        masks: Array4::from_shape_vec((n, s, s, CHANNELS), masks).map_err(shape_error)?,
    })
}

/// One phantom: the image `(S, S)` in HU and its one-hot mask `(S, S, 4)`.
pub fn generate_slice(
    config: &PhantomConfig,
    seed: u64,
    index: usize,
) -> (Array2<f64>, Array3<bool>) {
    let s = config.size;
    let slice = render(config, seed, index);
    let image = Array2::from_shape_fn((s, s), |(r, c)| f64::from(slice.hu[r * s + c]));
    let mask = Array3::from_shape_fn((s, s, CHANNELS), |(r, c, k)| {
        usize::from(slice.class[r * s + c]) == k
    });
    (image, mask)
}

/// Seeds every slice independently, so output does not depend on which thread renders which slice.
fn slice_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // One splitmix64 step so neighbouring (seed, index) pairs give unrelated streams.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

struct SliceBuf {
    hu: Vec<f32>,
    class: Vec<u8>,
}

impl SliceBuf {
    fn write_into(&self, image: &mut [f64], mask: &mut [bool]) {
        for (dst, &hu) in image.iter_mut().zip(&self.hu) {
            *dst = f64::from(hu);
        }
        for (pixel, &class) in mask.chunks_exact_mut(CHANNELS).zip(&self.class) {
            for (k, dst) in pixel.iter_mut().enumerate() {
                *dst = usize::from(class) == k;
            }
        }
    }
}

mod anatomy;
mod lesions;
mod noise;
mod render;
mod vessels;
mod volume;
mod volume_set;

pub use volume::{PhantomVolume, VolumePhantomConfig, generate_volume, volume_name};
pub use volume_set::{TRUTH_LUNGS, VolumeSetPaths, true_report, write_volume_set};

use anatomy::*;
use lesions::*;
use noise::*;
use render::*;
use vessels::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use ndarray::{ArrayView2, Axis, Slice};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn config(slices: usize, size: usize) -> PhantomConfig {
        PhantomConfig {
            slices,
            size,
            ..PhantomConfig::default()
        }
    }

    fn corner(image: &Array2<f64>, n: usize) -> ArrayView2<'_, f64> {
        image
            .slice_axis(Axis(0), Slice::from(0..n))
            .slice_axis_move(Axis(1), Slice::from(0..n))
    }

    fn median(mut values: Vec<f64>) -> f64 {
        assert!(!values.is_empty());
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    /// Per slice: (lung pixels, GGO pixels, consolidation pixels).
    fn counts(set: &PhantomSet) -> Vec<(usize, usize, usize)> {
        set.masks
            .outer_iter()
            .map(|m| {
                let ggo = m.index_axis(Axis(2), 0).iter().filter(|&&v| v).count();
                let cons = m.index_axis(Axis(2), 1).iter().filter(|&&v| v).count();
                let other = m.index_axis(Axis(2), 2).iter().filter(|&&v| v).count();
                (ggo + cons + other, ggo, cons)
            })
            .collect()
    }

    #[test]
    fn hounsfield_units_match_each_class() {
        let set = generate(&config(12, 128), 7, &NoProgress).unwrap();
        let mut per_class = vec![Vec::new(); CHANNELS];
        for (hu, mask) in set.images.iter().zip(set.masks.lanes(Axis(3))) {
            let class = mask.iter().position(|&v| v).unwrap();
            per_class[class].push(*hu);
        }
        let ggo = median(per_class[0].clone());
        let cons = median(per_class[1].clone());
        let lung = median(per_class[2].clone());
        assert!((-750.0..=-250.0).contains(&ggo), "GGO median {ggo}");
        assert!(
            (-150.0..=100.0).contains(&cons),
            "consolidation median {cons}"
        );
        assert!(
            (-900.0..=-780.0).contains(&lung),
            "other lung median {lung}"
        );
        let background = &per_class[3];
        let air = background.iter().filter(|&&v| v < -950.0).count();
        assert!(
            air > background.len() / 5,
            "too little air: {air} of {}",
            background.len()
        );
        let corners = set
            .images
            .slice_axis(Axis(1), Slice::from(0..4))
            .slice_axis_move(Axis(2), Slice::from(0..4))
            .iter()
            .copied()
            .collect();
        assert!((median(corners) + 1000.0).abs() < 30.0);
        let max = background.iter().copied().fold(f64::MIN, f64::max);
        assert!(max > 300.0, "no bone: max background HU {max}");
        // Soft tissue (body wall, heart) must be present too.
        let soft = background
            .iter()
            .filter(|&&v| (-20.0..=100.0).contains(&v))
            .count();
        assert!(soft > background.len() / 10);
    }

    #[test]
    fn both_lungs_present_and_apart() {
        let n = 64;
        let set = generate(&config(20, n), 3, &NoProgress).unwrap();
        for (index, mask) in set.masks.outer_iter().enumerate() {
            let lung = mask.map_axis(Axis(2), |p| !p[3]);
            let left = lung
                .slice_axis(Axis(1), Slice::from(..n / 2))
                .iter()
                .filter(|&&v| v)
                .count();
            let right = lung
                .slice_axis(Axis(1), Slice::from(n / 2..))
                .iter()
                .filter(|&&v| v)
                .count();
            let min = n * n / 20;
            assert!(
                left > min && right > min,
                "slice {index}: lung pixels {left} / {right}"
            );
            let centre = lung
                .slice_axis(Axis(1), Slice::from(n / 2 - 1..n / 2 + 1))
                .iter()
                .filter(|&&v| v)
                .count();
            assert_eq!(centre, 0, "slice {index}: lungs touch the midline");
        }
    }

    #[test]
    fn lesion_fractions_are_realistic() {
        let set = generate(&config(40, 64), 11, &NoProgress).unwrap();
        let per_slice = counts(&set);
        let free = per_slice.iter().filter(|(_, g, c)| g + c == 0).count();
        assert!(
            (2..=12).contains(&free),
            "{free} of 40 slices lesion-free, expected about 6"
        );
        let (mut ggo, mut cons, mut fractions) = (0, 0, Vec::new());
        for &(lung, g, c) in per_slice.iter().filter(|(_, g, c)| g + c > 0) {
            let fraction = (g + c) as f64 / lung as f64;
            assert!(
                (0.02..=0.40).contains(&fraction),
                "lesion fraction {fraction}"
            );
            fractions.push(fraction);
            ggo += g;
            cons += c;
        }
        assert!(
            ggo > 2 * cons,
            "GGO {ggo} should dominate consolidation {cons}"
        );
        assert!(cons > 0);
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        assert!((0.05..=0.25).contains(&mean), "mean lesion fraction {mean}");

        let all_clean = PhantomConfig {
            lesion_free_fraction: 1.0,
            ..config(5, 64)
        };
        let set = generate(&all_clean, 11, &NoProgress).unwrap();
        assert!(
            counts(&set)
                .iter()
                .all(|&(lung, g, c)| lung > 0 && g + c == 0)
        );
        let all_sick = PhantomConfig {
            lesion_free_fraction: 0.0,
            ..config(5, 64)
        };
        let set = generate(&all_sick, 11, &NoProgress).unwrap();
        assert!(counts(&set).iter().all(|&(_, g, c)| g + c > 0));
    }

    #[test]
    fn lesions_are_denser_than_the_lung_around_them() {
        let sick = PhantomConfig {
            lesion_free_fraction: 0.0,
            ..config(4, 128)
        };
        for index in 0..sick.slices {
            let (image, mask) = generate_slice(&sick, 5, index);
            let median_of = |k: usize| {
                let values: Vec<f64> = image
                    .iter()
                    .zip(mask.lanes(Axis(2)))
                    .filter(|(_, m)| m[k])
                    .map(|(&v, _)| v)
                    .collect();
                (!values.is_empty()).then(|| median(values))
            };
            let (ggo, lung) = (median_of(0).unwrap(), median_of(2).unwrap());
            assert!(ggo > lung + 150.0, "slice {index}: GGO {ggo}, lung {lung}");
            if let Some(cons) = median_of(1) {
                assert!(
                    cons > ggo + 300.0,
                    "slice {index}: consolidation {cons}, GGO {ggo}"
                );
            }
        }
    }

    #[test]
    fn masks_are_one_hot() {
        for size in [64, 256] {
            let set = generate(&config(3, size), 1, &NoProgress).unwrap();
            assert_eq!(set.images.dim(), (3, size, size, 1));
            assert_eq!(set.masks.dim(), (3, size, size, 4));
            assert!(
                set.masks
                    .lanes(Axis(3))
                    .into_iter()
                    .all(|p| p.iter().filter(|&&v| v).count() == 1)
            );
            assert!(
                set.images
                    .iter()
                    .all(|v| v.is_finite() && (-1024.0..=3071.0).contains(v))
            );
        }
    }

    #[test]
    fn geometry_scales_with_size() {
        let lung_share = |size: usize| {
            let (_, mask) = generate_slice(&config(1, size), 9, 4);
            mask.lanes(Axis(2)).into_iter().filter(|p| !p[3]).count() as f64 / (size * size) as f64
        };
        let (small, large) = (lung_share(64), lung_share(256));
        assert!(
            small > 0.1 && (small - large).abs() < 0.02,
            "lung share {small} at 64 px, {large} at 256 px"
        );
    }

    #[test]
    fn deterministic_per_seed_and_independent_of_threads() {
        let cfg = config(6, 64);
        let a = generate(&cfg, 42, &NoProgress).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| generate(&cfg, 42, &NoProgress)).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.masks, b.masks);
        let (image, mask) = generate_slice(&cfg, 42, 4);
        assert_eq!(
            image,
            a.images.index_axis(Axis(0), 4).index_axis(Axis(2), 0)
        );
        assert_eq!(mask, a.masks.index_axis(Axis(0), 4));
        let c = generate(&cfg, 43, &NoProgress).unwrap();
        assert_ne!(a.images, c.images);
        assert_ne!(a.masks, c.masks);
        // Slices of one data set are different patients, not copies.
        assert_ne!(
            a.masks.index_axis(Axis(0), 0),
            a.masks.index_axis(Axis(0), 1)
        );
    }

    #[test]
    fn noise_is_configurable() {
        let quiet = PhantomConfig {
            noise_hu: 0.0,
            ..config(1, 64)
        };
        let (image, _) = generate_slice(&quiet, 2, 0);
        assert!(corner(&image, 4).iter().all(|&v| v == -1000.0));
        let (image, _) = generate_slice(
            &PhantomConfig {
                noise_hu: 50.0,
                ..quiet
            },
            2,
            0,
        );
        let corner: Vec<f64> = corner(&image, 6).iter().copied().collect();
        let sd =
            (corner.iter().map(|v| (v + 1000.0).powi(2)).sum::<f64>() / corner.len() as f64).sqrt();
        assert!((25.0..=80.0).contains(&sd), "air noise sd {sd}");
    }

    #[test]
    fn reports_progress_per_slice() {
        struct Count(AtomicU64, AtomicU64);
        impl Progress for Count {
            fn start(&self, total: u64, unit: &str) {
                assert_eq!(unit, "slices");
                self.0.store(total, Ordering::SeqCst);
            }
            fn advance(&self, n: u64) {
                self.1.fetch_add(n, Ordering::SeqCst);
            }
        }
        let count = Count(AtomicU64::new(0), AtomicU64::new(0));
        generate(&config(5, 64), 0, &count).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 5);
        assert_eq!(count.1.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        assert!(PhantomConfig::default().validate().is_ok());
        let bad = [
            PhantomConfig {
                size: 40,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                size: 513,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                slices: 0,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                slices: 100_001,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: -0.1,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: 1.5,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: f64::NAN,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: -1.0,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: f64::INFINITY,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: f64::NAN,
                ..PhantomConfig::default()
            },
        ];
        for config in &bad {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, Error::InvalidParam { .. }),
                "{config:?}: {err}"
            );
            assert!(generate(config, 0, &NoProgress).is_err());
        }
        let err = bad[0].validate().unwrap_err().to_string();
        assert!(err.contains("size: expected 64…512, got 40"), "{err}");
        for size in [64, 512] {
            assert!(
                PhantomConfig {
                    size,
                    ..PhantomConfig::default()
                }
                .validate()
                .is_ok()
            );
        }
    }
}
