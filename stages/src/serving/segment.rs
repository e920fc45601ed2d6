//! Slices in, labels out, with a bundle's preprocessing and thresholds: the same functions
//! `predict` uses, so a slice gets the same labels from the endpoint as from `predict`.

use ndarray::{Array2, Array3, Array4, ArrayView4, Axis};

use super::RequestError;
use super::batcher::Model;
use super::decode::Slices;
use crate::data::intensity::{Preprocessing, SourceKind};
use crate::predict::{self, Tta};
use crate::training::{Bundle, Thresholds};

/// What the HTTP side needs to know of a bundle without holding the model.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub preprocessing: Preprocessing,
    pub thresholds: Thresholds,
}

impl Recipe {
    /// Model inputs `(N,C,S,S)` of decoded slices, after checking they are the kind of data the
    /// model was trained on.
    pub fn prepare(&self, slices: &Slices) -> Result<Array4<f32>, RequestError> {
        let pre = &self.preprocessing;
        match (pre.source, slices.source) {
            (SourceKind::Hu, SourceKind::EightBit) => {
                return Err(RequestError::Unsupported(
                    "this model was trained on HU slices; send them as .npy (application/x-npy), not as 8-bit images".into(),
                ));
            }
            (SourceKind::EightBit, SourceKind::Hu) => {
                return Err(RequestError::Unsupported(
                    "this model was trained on 8-bit images; send PNG or JPEG (or uint8 .npy), not HU".into(),
                ));
            }
            _ => {}
        }
        let mut out = Array4::zeros((slices.slices.len(), pre.channels(), pre.size, pre.size));
        for (i, slice) in slices.slices.iter().enumerate() {
            out.index_axis_mut(Axis(0), i)
                .assign(&predict::model_input(pre, slice.clone()));
        }
        Ok(out)
    }

    /// Label images (0 background, 1 GGO, 2 consolidation) of the model's probabilities
    /// `(N,2,S,S)`, each back at its slice's size, and the masks `(H,W,2)` the thresholds give.
    pub fn finish(&self, slices: &Slices, probabilities: &Array4<f32>) -> Vec<Segmented> {
        let thresholds = [self.thresholds.ggo, self.thresholds.consolidation];
        slices
            .slices
            .iter()
            .zip(probabilities.axis_iter(Axis(0)))
            .map(|(slice, p)| {
                let (h, w) = slice.dim();
                let p = predict::at_size(p, h, w);
                let masks = Array3::from_shape_fn((h, w, 2), |(y, x, c)| {
                    f64::from(p[(c, y, x)]) > thresholds[c]
                });
                Segmented {
                    labels: predict::labels(p.view(), thresholds),
                    masks,
                }
            })
            .collect()
    }

    /// The slice as the viewer shows it: the bundle's first window (0…1), or the grey image.
    pub fn display(&self, slice: &Array2<f32>) -> Array2<f32> {
        match self.preprocessing.source {
            SourceKind::Hu => self.preprocessing.windows[0].apply_all(slice.view()),
            SourceKind::EightBit => slice.mapv(|v| v / 255.0),
        }
    }
}

/// One slice's answer.
#[derive(Debug, Clone)]
pub struct Segmented {
    /// 0 background, 1 GGO, 2 consolidation (where both pass, consolidation).
    pub labels: Array2<u8>,
    /// `(H,W,2)`: GGO and consolidation, each by its own threshold (as `predict`'s masks.npy).
    pub masks: Array3<bool>,
}

/// A bundle as the batcher's model, with test-time augmentation.
pub struct BundleModel {
    pub bundle: Bundle,
    pub tta: Tta,
    /// Most slices per forward pass (a large request runs in chunks).
    pub max_batch: usize,
}

impl Model for BundleModel {
    fn input_shape(&self) -> (usize, usize) {
        (
            self.bundle.preprocessing.channels(),
            self.bundle.preprocessing.size,
        )
    }

    fn infer(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, String> {
        predict::probabilities(&self.bundle, batch, self.tta, self.max_batch.max(1))
            .map_err(|e| e.to_string())
    }
}
