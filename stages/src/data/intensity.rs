//! Intensity preprocessing: HU windows (each window one input channel, scaled to [0,1]) or the
//! 8-bit path for images that are already windowed, then normalisation with training statistics.
//! The split stores it so training, evaluation and prediction apply exactly the same transform.

use ndarray::{Array2, Array3, ArrayView2, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A HU window: values in [center − width/2, center + width/2] map linearly to [0,1]; others clip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub center: f32,
    pub width: f32,
}

impl Window {
    pub const LUNG: Self = Self {
        center: -600.0,
        width: 1500.0,
    };
    pub const MEDIASTINAL: Self = Self {
        center: 40.0,
        width: 400.0,
    };

    pub fn apply(&self, hu: f32) -> f32 {
        ((hu - (self.center - self.width / 2.0)) / self.width).clamp(0.0, 1.0)
    }

    /// [`Window::apply`] on every pixel of a slice.
    pub fn apply_all(&self, hu: ArrayView2<f32>) -> Array2<f32> {
        hu.mapv(|v| self.apply(v))
    }
}

/// How windowed intensities are normalised before the model sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// (x − mean) / std per channel, with mean and std of the training slices.
    Zscore,
    /// (x − min) / (max − min) per channel, with min and max of the training slices.
    Minmax,
    /// Windowed values in [0,1] as they are.
    None,
}

/// Where the intensities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Hounsfield units (the Kaggle .npy files, phantoms): windowed.
    Hu,
    /// 8-bit images already windowed by their source (image folders): v / 255, one channel.
    EightBit,
}

/// The transform the split fixed, stored as `preprocessing.json` and applied by every later stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub source: SourceKind,
    pub windows: Vec<Window>,
    /// Width and height the slices are resized to.
    pub size: usize,
    pub normalize: Normalize,
    /// Per channel: (shift, scale) so that model input = (x − shift) / scale.
    pub shift: Vec<f32>,
    pub scale: Vec<f32>,
    /// The model's pixel spacing in mm, for models trained on volumes resampled to it: volumes
    /// are resampled in plane to it and centred on the canvas before the model sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_mm: Option<f64>,
}

impl Preprocessing {
    pub fn channels(&self) -> usize {
        match self.source {
            SourceKind::Hu => self.windows.len(),
            SourceKind::EightBit => 1,
        }
    }

    /// Windowed channels `(C,H,W)` in [0,1] of one HU slice.
    pub fn window_hu(&self, hu: ArrayView2<f32>) -> Array3<f32> {
        let (h, w) = hu.dim();
        let mut out = Array3::zeros((self.windows.len(), h, w));
        for (c, window) in self.windows.iter().enumerate() {
            out.index_axis_mut(Axis(0), c)
                .zip_mut_with(&hu, |o, &v| *o = window.apply(v));
        }
        out
    }

    /// One channel `(1,H,W)` in [0,1] of an 8-bit grey slice given as 0…255.
    pub fn window_8bit(grey: ArrayView2<f32>) -> Array3<f32> {
        grey.mapv(|v| (v / 255.0).clamp(0.0, 1.0))
            .insert_axis(Axis(0))
    }

    /// Normalises windowed channels in place for the model.
    pub fn normalize(&self, mut x: ArrayViewMut3<f32>) {
        for (c, mut channel) in x.axis_iter_mut(Axis(0)).enumerate() {
            let (shift, scale) = (self.shift[c], self.scale[c]);
            channel.mapv_inplace(|v| (v - shift) / scale);
        }
    }

    /// Fixes the normalisation from the windowed training slices `(N,C,H,W)`.
    pub fn fit(
        source: SourceKind,
        windows: Vec<Window>,
        size: usize,
        normalize: Normalize,
        train: &ndarray::Array4<f32>,
    ) -> Result<Self> {
        let channels = train.dim().1;
        let (mut shift, mut scale) = (vec![0.0; channels], vec![1.0; channels]);
        for c in 0..channels {
            let lane = train.index_axis(Axis(1), c);
            match normalize {
                Normalize::None => {}
                Normalize::Zscore => {
                    let n = lane.len().max(1) as f64;
                    let mean = lane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                    let var = lane
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    shift[c] = mean as f32;
                    scale[c] = (var.sqrt() as f32).max(1e-6);
                }
                Normalize::Minmax => {
                    let min = lane.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    shift[c] = min;
                    scale[c] = (max - min).max(1e-6);
                }
            }
        }
        if shift.iter().chain(&scale).any(|v| !v.is_finite()) {
            return Err(Error::invalid_param(
                "normalize",
                "training slices gave non-finite statistics (an empty training split?)",
            ));
        }
        Ok(Self {
            source,
            windows,
            size,
            normalize,
            shift,
            scale,
            pixel_mm: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array4};

    #[test]
    fn lung_window_maps_its_range_to_unit_interval() {
        let w = Window::LUNG;
        assert_eq!(w.apply(-1350.0), 0.0);
        assert_eq!(w.apply(150.0), 1.0);
        assert_eq!(w.apply(-600.0), 0.5);
        assert_eq!(w.apply(-3000.0), 0.0);
        assert_eq!(w.apply(3000.0), 1.0);
    }

    #[test]
    fn several_windows_become_channels() {
        let p = Preprocessing {
            source: SourceKind::Hu,
            windows: vec![Window::LUNG, Window::MEDIASTINAL],
            size: 2,
            normalize: Normalize::None,
            shift: vec![0.0; 2],
            scale: vec![1.0; 2],
            pixel_mm: None,
        };
        let hu = Array2::from_shape_vec((1, 2), vec![-600.0, 40.0]).unwrap();
        let x = p.window_hu(hu.view());
        assert_eq!(x.dim(), (2, 1, 2));
        assert_eq!(x[[0, 0, 0]], 0.5);
        assert_eq!(x[[1, 0, 1]], 0.5);
    }

    #[test]
    fn zscore_uses_training_statistics() {
        let train = Array4::from_shape_vec((2, 1, 1, 2), vec![0.0, 1.0, 0.0, 1.0]).unwrap();
        let p = Preprocessing::fit(
            SourceKind::Hu,
            vec![Window::LUNG],
            2,
            Normalize::Zscore,
            &train,
        )
        .unwrap();
        assert_eq!((p.shift[0], p.scale[0]), (0.5, 0.5));
        let mut x = Array3::from_elem((1, 1, 1), 1.0);
        p.normalize(x.view_mut());
        assert_eq!(x[[0, 0, 0]], 1.0);
        let m = Preprocessing::fit(
            SourceKind::Hu,
            vec![Window::LUNG],
            2,
            Normalize::Minmax,
            &(train * 0.5 + 0.25),
        )
        .unwrap();
        assert_eq!((m.shift[0], m.scale[0]), (0.25, 0.5));
    }
}
