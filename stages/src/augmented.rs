//! The augmented training set: K augmented copies of every training slice, made in parallel and
//! deterministically from the seed, stored as `.npy` shards with an index, plus a preview grid.

use std::path::Path;

use ndarray::{Array3, Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, augment};
use crate::data::npy;
use crate::{Error, Progress, Result, render};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentCacheConfig {
    /// Augmented copies per training slice.
    pub copies: usize,
    /// Items per shard file; a shard is written at once, so this bounds memory.
    pub shard_size: usize,
    /// Tiles in the preview grid.
    pub preview: usize,
    /// The ops, each with its probability and ranges.
    pub ops: AugmentConfig,
}

impl Default for AugmentCacheConfig {
    fn default() -> Self {
        Self {
            copies: 4,
            shard_size: 256,
            preview: 16,
            ops: AugmentConfig::default(),
        }
    }
}

impl AugmentCacheConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.copies) {
            return Err(Error::invalid_param(
                "copies",
                format!("expected 1…1000, got {}", self.copies),
            ));
        }
        if self.shard_size == 0 {
            return Err(Error::invalid_param("shard_size", "expected at least 1"));
        }
        if self.preview > 256 {
            return Err(Error::invalid_param(
                "preview",
                format!("expected at most 256 tiles, got {}", self.preview),
            ));
        }
        self.ops.validate()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub images: String,
    pub labels: String,
    pub items: usize,
}

/// `index.json` of the shards folder. Item `k·slices + i` is copy `k` of training slice `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub slices: usize,
    pub copies: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub shards: Vec<Shard>,
}

/// The generator of one item: depends on the seed, the slice and the copy only, so results do not
/// depend on thread count or shard size.
fn item_rng(seed: u64, slice: usize, copy: usize) -> ChaCha8Rng {
    let mut z = seed
        ^ (slice as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (copy as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Augments every training slice `copies` times and writes shards into `dir`.
pub fn build(
    images: &Array4<f32>,
    labels: &Array3<u8>,
    config: &AugmentCacheConfig,
    seed: u64,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<ShardIndex> {
    config.validate()?;
    let (n, c, h, w) = images.dim();
    if n == 0 {
        return Err(Error::invalid_data(
            dir,
            "the training split holds no slices",
        ));
    }
    if labels.dim() != (n, h, w) {
        return Err(Error::invalid_data(
            dir,
            format!(
                "labels are {:?} but images are {:?}; both must come from the same split",
                labels.dim(),
                images.dim()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let total = n * config.copies;
    progress.start(total as u64, "slices");
    let mut shards = Vec::new();
    for (s, start) in (0..total).step_by(config.shard_size).enumerate() {
        let items: Vec<usize> = (start..(start + config.shard_size).min(total)).collect();
        let made: Vec<(Array3<f32>, ndarray::Array2<u8>)> = items
            .par_iter()
            .map(|&item| {
                let (copy, slice) = (item / n, item % n);
                let mut rng = item_rng(seed, slice, copy);
                let out = augment(
                    images.index_axis(Axis(0), slice),
                    labels.index_axis(Axis(0), slice),
                    &config.ops,
                    &mut rng,
                );
                progress.advance(1);
                out
            })
            .collect();
        let mut shard_images = Array4::zeros((made.len(), c, h, w));
        let mut shard_labels = Array3::zeros((made.len(), h, w));
        for (i, (x, l)) in made.iter().enumerate() {
            shard_images.index_axis_mut(Axis(0), i).assign(x);
            shard_labels.index_axis_mut(Axis(0), i).assign(l);
        }
        let shard = Shard {
            images: format!("images_{s:05}.npy"),
            labels: format!("labels_{s:05}.npy"),
            items: made.len(),
        };
        npy::write(&dir.join(&shard.images), &shard_images)?;
        npy::write(&dir.join(&shard.labels), &shard_labels)?;
        shards.push(shard);
    }
    let index = ShardIndex {
        slices: n,
        copies: config.copies,
        channels: c,
        height: h,
        width: w,
        shards,
    };
    let text = serde_json::to_string_pretty(&index)
        .map_err(|e| Error::invalid_data(dir, e.to_string()))?;
    std::fs::write(dir.join("index.json"), text + "\n")
        .map_err(|e| Error::io(dir.join("index.json"), e))?;
    Ok(index)
}

/// The first `count` items (first shard), first channel, with labels overlaid, as one grid.
pub fn preview(dir: &Path, index: &ShardIndex, count: usize) -> Result<image::RgbImage> {
    let Some(first) = index.shards.first() else {
        return Ok(render::grid(&[], 1));
    };
    let images: Array4<f32> = npy::read(&dir.join(&first.images))?;
    let labels: Array3<u8> = npy::read(&dir.join(&first.labels))?;
    let tiles: Vec<image::RgbImage> = (0..count.min(first.items))
        .map(|i| {
            render::fit(
                render::overlay(
                    images.index_axis(Axis(0), i).index_axis(Axis(0), 0),
                    labels.index_axis(Axis(0), i),
                ),
                256,
            )
        })
        .collect();
    let columns = (tiles.len() as f64).sqrt().ceil() as usize;
    Ok(render::grid(&tiles, columns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, size: usize) -> (Array4<f32>, Array3<u8>) {
        let images = Array4::from_shape_fn((n, 1, size, size), |(i, _, y, x)| {
            ((i + y + x) % 7) as f32 / 7.0
        });
        let labels = Array3::from_shape_fn((n, size, size), |(_, y, x)| {
            u8::from(y > size / 2) + u8::from(x > size / 2)
        });
        (images, labels)
    }

    #[test]
    fn shards_hold_every_copy_and_same_seed_gives_same_bytes() {
        let (images, labels) = data(5, 32);
        let config = AugmentCacheConfig {
            copies: 3,
            shard_size: 4,
            ..Default::default()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let index = build(&images, &labels, &config, 9, a.path(), &crate::NoProgress).unwrap();
        assert_eq!(
            index.shards.iter().map(|s| s.items).collect::<Vec<_>>(),
            vec![4, 4, 4, 3]
        );
        build(
            &images,
            &labels,
            &AugmentCacheConfig {
                shard_size: 7,
                ..config.clone()
            },
            9,
            b.path(),
            &crate::NoProgress,
        )
        .unwrap();
        // Same items whatever the shard size: compare item 5 (copy 1 of slice 0).
        let first: Array4<f32> = npy::read(&a.path().join("images_00001.npy")).unwrap();
        let other: Array4<f32> = npy::read(&b.path().join("images_00000.npy")).unwrap();
        assert_eq!(first.index_axis(Axis(0), 1), other.index_axis(Axis(0), 5));
        let c = tempfile::tempdir().unwrap();
        build(&images, &labels, &config, 9, c.path(), &crate::NoProgress).unwrap();
        for f in ["images_00000.npy", "labels_00003.npy", "index.json"] {
            assert_eq!(
                std::fs::read(a.path().join(f)).unwrap(),
                std::fs::read(c.path().join(f)).unwrap(),
                "{f}"
            );
        }
        let picture = preview(a.path(), &index, 4).unwrap();
        assert!(picture.width() > 32 && picture.height() > 32);
    }

    #[test]
    fn rejects_empty_and_mismatched_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let error = |images: &Array4<f32>, labels: &Array3<u8>| {
            build(
                images,
                labels,
                &AugmentCacheConfig::default(),
                1,
                dir.path(),
                &crate::NoProgress,
            )
            .unwrap_err()
            .to_string()
        };
        let (images, labels) = data(0, 8);
        assert!(error(&images, &labels).contains("holds no slices"));
        let (images, _) = data(2, 8);
        let (_, labels) = data(3, 8);
        assert!(error(&images, &labels).contains("same split"));
        let bad = AugmentCacheConfig {
            copies: 0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("params.copies")
        );
    }
}
