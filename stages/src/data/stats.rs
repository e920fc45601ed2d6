//! Dataset statistics: per mask class, the share of pixels, the slices that contain it and its HU
//! percentiles. A quick check that data (real or synthetic) looks like lung CT before training.

use std::path::Path;

use ndarray::{Array4, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kaggle::MASK_CHANNELS;
use super::split::SplitManifest;
use crate::{Error, Result};

/// Histogram range: 1-HU bins from −1100 to +3099 cover air to dense bone; values outside clamp.
const HU_MIN: f32 = -1100.0;
const BINS: usize = 4200;
pub const CLASS_NAMES: [&str; MASK_CHANNELS] = ["ggo", "consolidation", "other_lung", "background"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    All,
    Train,
    Val,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// HU percentiles reported per class, each in 0…100.
    pub percentiles: Vec<f64>,
    /// With a split manifest: which of its parts to describe.
    pub part: Part,
    /// With a split manifest: the source name the images belong to (`medseg`, `radiopedia`).
    pub source: String,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            percentiles: vec![1.0, 5.0, 50.0, 95.0, 99.0],
            part: Part::All,
            source: "medseg".into(),
        }
    }
}

impl StatsConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = self
            .percentiles
            .iter()
            .find(|p| !(0.0..=100.0).contains(*p))
        {
            return Err(Error::invalid_param(
                "percentiles",
                format!("each must be within 0…100, got {p}"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub class: String,
    pub pixel_fraction: f64,
    pub slices_present: usize,
    /// Percentile → HU (to 1 HU), absent for a class with no pixels.
    pub hu_percentiles: Vec<(f64, f32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    pub slices: usize,
    pub height: usize,
    pub width: usize,
    pub classes: Vec<ClassStats>,
}

struct Tally {
    hist: Vec<[u64; BINS]>,
    present: [usize; MASK_CHANNELS],
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: vec![[0; BINS]; MASK_CHANNELS],
            present: [0; MASK_CHANNELS],
        }
    }

    fn merge(mut self, other: Self) -> Self {
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (a, b) in self.present.iter_mut().zip(other.present) {
            *a += b;
        }
        self
    }
}

/// Slice indices of `source` in the manifest's `part`.
pub fn select(manifest: &SplitManifest, part: Part, source: &str) -> Option<Vec<usize>> {
    let refs = match part {
        Part::All => return None,
        Part::Train => &manifest.train,
        Part::Val => &manifest.val,
    };
    let prefix = format!("{source}/");
    Some(
        refs.iter()
            .filter_map(|r| r.strip_prefix(&prefix)?.parse().ok())
            .collect(),
    )
}

pub fn read_manifest(path: &Path) -> Result<SplitManifest> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid_data(path, format!("not a split manifest: {e}")))
}

pub fn compute(
    images: &Array4<f32>,
    masks: &Array4<bool>,
    selection: Option<&[usize]>,
    config: &StatsConfig,
) -> Result<DatasetStats> {
    config.validate()?;
    let (n, h, w, _) = images.dim();
    let indices: Vec<usize> = match selection {
        Some(s) => s.to_vec(),
        None => (0..n).collect(),
    };
    if let Some(bad) = indices.iter().find(|&&i| i >= n) {
        return Err(Error::invalid_param(
            "part",
            format!("the manifest names slice {bad} but the images have {n}"),
        ));
    }
    let tally = indices
        .par_iter()
        .map(|&i| {
            let mut t = Tally::new();
            let image = images.index_axis(Axis(0), i);
            let mask = masks.index_axis(Axis(0), i);
            for c in 0..MASK_CHANNELS {
                let mut any = false;
                for (v, &m) in image.iter().zip(mask.index_axis(Axis(2), c).iter()) {
                    if m {
                        any = true;
                        let bin = ((v - HU_MIN).max(0.0) as usize).min(BINS - 1);
                        t.hist[c][bin] += 1;
                    }
                }
                t.present[c] += usize::from(any);
            }
            t
        })
        .reduce(Tally::new, Tally::merge);
    let total = (indices.len() * h * w).max(1) as f64;
    let classes = (0..MASK_CHANNELS)
        .map(|c| {
            let count: u64 = tally.hist[c].iter().sum();
            let hu_percentiles = if count == 0 {
                Vec::new()
            } else {
                config
                    .percentiles
                    .iter()
                    .map(|&p| (p, percentile(&tally.hist[c], count, p)))
                    .collect()
            };
            ClassStats {
                class: CLASS_NAMES[c].into(),
                pixel_fraction: count as f64 / total,
                slices_present: tally.present[c],
                hu_percentiles,
            }
        })
        .collect();
    Ok(DatasetStats {
        slices: indices.len(),
        height: h,
        width: w,
        classes,
    })
}

/// The HU of the bin holding the `p`-th percentile.
fn percentile(hist: &[u64; BINS], count: u64, p: f64) -> f32 {
    let rank = ((p / 100.0) * (count - 1) as f64).round() as u64;
    let mut seen = 0;
    for (bin, &k) in hist.iter().enumerate() {
        seen += k;
        if seen > rank {
            return HU_MIN + bin as f32;
        }
    }
    HU_MIN + (BINS - 1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_presence_and_percentiles() {
        // Two 2×2 slices: slice 0 all GGO at −500; slice 1 half background at −1000, half lung at −850.
        let images = Array4::from_shape_vec(
            (2, 2, 2, 1),
            vec![
                -500.0, -500.0, -500.0, -500.0, -1000.0, -1000.0, -850.0, -850.0,
            ],
        )
        .unwrap();
        let mut masks = Array4::from_elem((2, 2, 2, 4), false);
        for y in 0..2 {
            for x in 0..2 {
                masks[[0, y, x, 0]] = true;
                masks[[1, y, x, if y == 0 { 3 } else { 2 }]] = true;
            }
        }
        let stats = compute(&images, &masks, None, &StatsConfig::default()).unwrap();
        let ggo = &stats.classes[0];
        assert_eq!((ggo.pixel_fraction, ggo.slices_present), (0.5, 1));
        assert!(ggo.hu_percentiles.iter().all(|&(_, hu)| hu == -500.0));
        assert_eq!(stats.classes[1].hu_percentiles, vec![]);
        assert_eq!(stats.classes[3].hu_percentiles[2], (50.0, -1000.0));
        let only_second = compute(&images, &masks, Some(&[1]), &StatsConfig::default()).unwrap();
        assert_eq!(only_second.classes[0].pixel_fraction, 0.0);
        assert!(compute(&images, &masks, Some(&[2]), &StatsConfig::default()).is_err());
    }
}
