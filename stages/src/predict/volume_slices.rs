//! A CT volume through the model, one axial slice at a time: each slice goes onto the model's
//! input (at the bundle's `pixel_mm` where it has one, else resized to the training size), and
//! each slice's probabilities come back onto the slice's own grid, where the bundle's thresholds
//! make the lesion labels `[i, j, k]`. `predict` and the endpoint share it, so a volume gets the
//! same labels from both.

use std::ops::Range;

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis};

use super::{at_size, labels, model_input};
use crate::data::intensity::Preprocessing;
use crate::data::spacing::{PAD_HU, SpacingPlan};
use crate::volume::Volume;

/// A volume's slices as model inputs, and the way back.
pub struct VolumeSlices<'a> {
    pre: &'a Preprocessing,
    volume: &'a Volume,
    plan: Option<SpacingPlan>,
}

impl<'a> VolumeSlices<'a> {
    pub fn new(pre: &'a Preprocessing, volume: &'a Volume) -> Self {
        let [ni, nj, _] = volume.shape();
        let plan = pre.pixel_mm.map(|mm| {
            let spacing = volume.spacing();
            // Images are rows j by columns i: Pixel Spacing is (between rows, between columns).
            SpacingPlan::new(nj, ni, [spacing[1], spacing[0]], mm, pre.size)
        });
        Self { pre, volume, plan }
    }

    /// Number of slices (k).
    pub fn len(&self) -> usize {
        self.volume.shape()[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slice `k` in HU as an image: rows j, columns i (as a DICOM viewer shows it).
    pub fn image(&self, k: usize) -> Array2<f32> {
        self.volume.hu.index_axis(Axis(2), k).t().to_owned()
    }

    /// Model inputs `(n,C,S,S)` of the slices in `range`.
    pub fn inputs(&self, range: Range<usize>) -> Array4<f32> {
        let pre = self.pre;
        let mut batch = Array4::zeros((range.len(), pre.channels(), pre.size, pre.size));
        for (i, k) in range.enumerate() {
            let image = self.image(k);
            let canvas = match &self.plan {
                Some(plan) => plan.to_model(image.view(), PAD_HU),
                None => image,
            };
            batch
                .index_axis_mut(Axis(0), i)
                .assign(&model_input(pre, canvas));
        }
        batch
    }

    /// One slice's probabilities `(K,S,S)` back on the slice's grid: `(K, nj, ni)`.
    pub fn back(&self, p: ArrayView3<f32>) -> Array3<f32> {
        let [ni, nj, _] = self.volume.shape();
        match &self.plan {
            None => at_size(p, nj, ni),
            Some(plan) => {
                let mut out = Array3::zeros((p.dim().0, nj, ni));
                for (c, channel) in p.axis_iter(Axis(0)).enumerate() {
                    out.index_axis_mut(Axis(0), c)
                        .assign(&plan.from_model(channel));
                }
                out
            }
        }
    }
}

/// What the model found in a volume, filled in slice by slice.
pub struct VolumeLesions {
    /// 0 background, 1 GGO, 2 consolidation, indexed `[i, j, k]`.
    pub labels: Array3<u8>,
    /// GGO and consolidation probabilities `[i, j, k]`, where kept.
    pub probabilities: Option<[Array3<f32>; 2]>,
    thresholds: [f64; 2],
}

impl VolumeLesions {
    pub fn new(shape: [usize; 3], thresholds: [f64; 2], keep_probabilities: bool) -> Self {
        let [ni, nj, nk] = shape;
        Self {
            labels: Array3::zeros((ni, nj, nk)),
            probabilities: keep_probabilities
                .then(|| [Array3::zeros((ni, nj, nk)), Array3::zeros((ni, nj, nk))]),
            thresholds,
        }
    }

    /// Slice `k`'s probabilities `(2, nj, ni)` on the slice's grid (from [`VolumeSlices::back`]).
    pub fn set(&mut self, k: usize, p: ArrayView3<f32>) {
        self.labels
            .index_axis_mut(Axis(2), k)
            .assign(&labels(p, self.thresholds).t());
        if let Some(maps) = &mut self.probabilities {
            for (c, map) in maps.iter_mut().enumerate() {
                map.index_axis_mut(Axis(2), k)
                    .assign(&p.index_axis(Axis(0), c).t());
            }
        }
    }
}
