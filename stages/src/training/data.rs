//! What training reads: items of the augment-cache shards, read one at a time from the `.npy`
//! files (the shards of a real data set do not fit in memory), the validation arrays, and the
//! per-epoch order, a pure function of seed and epoch so that a resumed run draws the same.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayView3, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::augmented::ShardIndex;
use crate::data::npy::{self, Header as NpyHeader};
use crate::{Error, Result};

/// Label values of the two predicted classes, in channel order (GGO, consolidation).
pub const TARGET_LABELS: [u8; 2] = [1, 2];

/// One `.npy` array of a shard: where its data starts and how long one item is.
#[derive(Debug, Clone)]
struct ShardArray {
    path: PathBuf,
    offset: u64,
    item_bytes: usize,
}

impl ShardArray {
    /// Checks the header (`descr`, C order, shape) and finds where the data starts.
    fn open(path: PathBuf, descr: &str, shape: &[usize]) -> Result<Self> {
        let header = NpyHeader::read(&path)?;
        if header.descr != descr || header.fortran_order || header.shape != shape {
            return Err(Error::invalid_data(
                &path,
                format!(
                    "expected a C-order {descr} array of shape {shape:?} (as index.json says), \
                     found {} {:?}{}",
                    header.descr,
                    header.shape,
                    if header.fortran_order {
                        " in Fortran order"
                    } else {
                        ""
                    }
                ),
            ));
        }
        // The header was checked against the file's length.
        let offset = header.data_offset;
        let item_bytes = shape[1..].iter().product::<usize>() * header.element_bytes;
        Ok(Self {
            path,
            offset,
            item_bytes,
        })
    }

    fn read(&self, file: &mut File, item: usize, out: &mut [u8]) -> Result<()> {
        file.seek(SeekFrom::Start(
            self.offset + (item * self.item_bytes) as u64,
        ))
        .and_then(|_| file.read_exact(out))
        .map_err(|e| Error::io(&self.path, e))
    }
}

/// The augmented training items of a shards folder, read on demand.
#[derive(Debug, Clone)]
pub struct TrainingItems {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per shard: images, labels, and the first item's global index.
    shards: Vec<(ShardArray, ShardArray, usize)>,
    len: usize,
}

impl TrainingItems {
    /// Opens `dir/index.json` and checks every shard's header against it.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("index.json");
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_data(&index_path, format!("not an augment-cache index: {e}"))
        })?;
        let (c, h, w) = (index.channels, index.height, index.width);
        let mut shards = Vec::with_capacity(index.shards.len());
        let mut len = 0;
        for shard in &index.shards {
            let images = ShardArray::open(dir.join(&shard.images), "<f4", &[shard.items, c, h, w])?;
            let labels = ShardArray::open(dir.join(&shard.labels), "|u1", &[shard.items, h, w])?;
            shards.push((images, labels, len));
            len += shard.items;
        }
        if len == 0 {
            return Err(Error::invalid_data(
                dir,
                "the shards hold no training items",
            ));
        }
        Ok(Self {
            channels: c,
            height: h,
            width: w,
            shards,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The images `(n,C,H,W)` and labels `(n,H,W)` of the given items, in that order.
    pub fn batch(&self, items: &[usize]) -> Result<(Array4<f32>, Array3<u8>)> {
        let (c, h, w) = (self.channels, self.height, self.width);
        let mut images = Array4::<f32>::zeros((items.len(), c, h, w));
        let mut labels = Array3::<u8>::zeros((items.len(), h, w));
        let mut image_bytes = vec![0u8; c * h * w * 4];
        let mut files: Vec<Option<(File, File)>> = Vec::new();
        files.resize_with(self.shards.len(), || None);
        for (i, &item) in items.iter().enumerate() {
            let s = self.shards.partition_point(|(_, _, first)| *first <= item) - 1;
            let (image_array, label_array, first) = &self.shards[s];
            if files[s].is_none() {
                let open = |a: &ShardArray| File::open(&a.path).map_err(|e| Error::io(&a.path, e));
                files[s] = Some((open(image_array)?, open(label_array)?));
            }
            let Some((image_file, label_file)) = files[s].as_mut() else {
                unreachable!("opened above");
            };
            image_array.read(image_file, item - first, &mut image_bytes)?;
            let floats = image_bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            for (dst, v) in images.index_axis_mut(Axis(0), i).iter_mut().zip(floats) {
                *dst = v;
            }
            let mut label = labels.index_axis_mut(Axis(0), i);
            let slice = label
                .as_slice_mut()
                .ok_or_else(|| Error::invalid_data(&label_array.path, "non-contiguous labels"))?;
            label_array.read(label_file, item - first, slice)?;
        }
        Ok((images, labels))
    }
}

/// The validation slices, held in memory (they are few).
#[derive(Debug, Clone)]
pub struct Validation {
    pub images: Array4<f32>,
    pub labels: Array3<u8>,
}

impl Validation {
    pub fn read(images_path: &Path, labels_path: &Path) -> Result<Self> {
        let images: Array4<f32> = npy::read(images_path)?;
        let labels: Array3<u8> = npy::read(labels_path)?;
        let (n, _, h, w) = images.dim();
        if labels.dim() != (n, h, w) {
            return Err(Error::invalid_data(
                labels_path,
                format!(
                    "labels are {:?} but the validation images are {:?}; both must come from the same split",
                    labels.dim(),
                    images.dim()
                ),
            ));
        }
        if n == 0 {
            return Err(Error::invalid_data(
                images_path,
                "the validation split holds no slices",
            ));
        }
        Ok(Self { images, labels })
    }
}

/// Per-class float targets `(n,2,H,W)`: channel k is 1 where the label is `TARGET_LABELS[k]`.
pub fn targets(labels: ArrayView3<u8>) -> Array4<f32> {
    let (n, h, w) = labels.dim();
    Array4::from_shape_fn((n, TARGET_LABELS.len(), h, w), |(i, k, y, x)| {
        f32::from(u8::from(labels[[i, y, x]] == TARGET_LABELS[k]))
    })
}

/// The order items are visited in epoch `epoch` (0-based): a shuffle seeded from (seed, epoch)
/// only, truncated to `limit` items when one is set.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, limit: Option<usize>) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64));
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order.truncate(limit.unwrap_or(len));
    order
}

/// SplitMix64 of the pair, so neighbouring epochs get unrelated streams.
pub fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augmented::{AugmentCacheConfig, build};

    #[test]
    fn reads_items_across_shards_like_the_arrays_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let images = Array4::from_shape_fn((3, 2, 8, 8), |(i, c, y, x)| {
            (i * 100 + c * 10 + y + x) as f32 / 300.0
        });
        let labels = Array3::from_shape_fn((3, 8, 8), |(i, y, _)| ((i + y) % 4) as u8);
        let config = AugmentCacheConfig {
            copies: 2,
            shard_size: 4,
            ..Default::default()
        };
        build(&images, &labels, &config, 3, dir.path(), &crate::NoProgress).unwrap();
        let items = TrainingItems::open(dir.path()).unwrap();
        assert_eq!((items.len(), items.channels, items.height), (6, 2, 8));
        let (x, l) = items.batch(&[5, 0, 4]).unwrap();
        let second: Array4<f32> = npy::read(&dir.path().join("images_00001.npy")).unwrap();
        let second_labels: Array3<u8> = npy::read(&dir.path().join("labels_00001.npy")).unwrap();
        assert_eq!(x.index_axis(Axis(0), 0), second.index_axis(Axis(0), 1));
        assert_eq!(
            l.index_axis(Axis(0), 2),
            second_labels.index_axis(Axis(0), 0)
        );
        let t = targets(l.view());
        assert_eq!(t.dim(), (3, 2, 8, 8));
        assert_eq!(
            t.iter().filter(|&&v| v == 1.0).count(),
            l.iter().filter(|&&v| v == 1 || v == 2).count()
        );
    }

    #[test]
    fn a_damaged_shard_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let images = Array4::<f32>::zeros((2, 1, 8, 8));
        let labels = Array3::<u8>::zeros((2, 8, 8));
        build(
            &images,
            &labels,
            &AugmentCacheConfig::default(),
            1,
            dir.path(),
            &crate::NoProgress,
        )
        .unwrap();
        let shard = dir.path().join("images_00000.npy");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
        let message = TrainingItems::open(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("images_00000.npy") && message.contains("truncated"),
            "{message}"
        );
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 7, 3, None);
        assert_eq!(a, epoch_order(50, 7, 3, None));
        assert_ne!(a, epoch_order(50, 7, 4, None));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(epoch_order(50, 7, 3, Some(10)), a[..10]);
    }
}
