//! Prediction: a model bundle applied to new slices, with optional test-time augmentation.
//!
//! - Kaggle `.npy` images `(N,H,W,1)` in HU → `masks.npy` `(N,H,W,2)` bool (channel 0 GGO,
//!   1 consolidation), the layout `package-submission` reads.
//! - An image folder (`images/<id>.png|jpg`, or the images directly) → one label PNG per input,
//!   same id, at the input's own size: 0 background, 1 GGO, 2 consolidation.
//!
//! Slices are preprocessed as the split fixed (window, resize to the training size, normalise);
//! probabilities are resized back to each slice's own size before the per-class thresholds of the
//! bundle apply. Where both classes pass their threshold a label image says consolidation (the
//! rule of the training labels); the `.npy` masks keep both.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Array3, Array4, ArrayView3, Axis, s};
use serde::{Deserialize, Serialize};

use crate::data::intensity::{Preprocessing, SourceKind};
use crate::data::{folder, kaggle, npy, resize};
use crate::training::Bundle;
use crate::{Error, Progress, Result};

/// Test-time augmentation: predictions on mirrored copies, un-mirrored and averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tta {
    /// The slice as it is.
    #[default]
    None,
    /// The slice and its left-right mirror.
    Flip2,
    /// The slice, its left-right, up-down and both-ways mirrors.
    Flip4,
}

impl Tta {
    /// (mirror rows, mirror columns) of each view.
    fn views(self) -> &'static [(bool, bool)] {
        match self {
            Tta::None => &[(false, false)],
            Tta::Flip2 => &[(false, false), (false, true)],
            Tta::Flip4 => &[(false, false), (false, true), (true, false), (true, true)],
        }
    }
}

/// The `predict` stage's params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictConfig {
    pub tta: Tta,
    /// Slices per forward pass.
    pub batch_size: usize,
    /// Overlay PNGs written (the first slices), 0 for none.
    pub overlays: usize,
    pub device: crate::training::DeviceChoice,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            tta: Tta::None,
            batch_size: 4,
            overlays: 8,
            device: crate::training::DeviceChoice::Auto,
        }
    }
}

impl PredictConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid_param("batch_size", "expected at least 1"));
        }
        Ok(())
    }
}

/// Probabilities `(N,2,S,S)` of windowed slices `(N,C,S,S)` in [0,1], averaged over the TTA views.
pub fn probabilities(
    bundle: &Bundle,
    images: ArrayView4F<'_>,
    tta: Tta,
    batch: usize,
) -> Result<Array4<f32>> {
    let views = tta.views();
    let mut sum: Option<Array4<f32>> = None;
    for &(rows, cols) in views {
        let view = mirror(images, rows, cols);
        let p = bundle.predict(view.view(), batch)?;
        let p = mirror(p.view(), rows, cols);
        sum = Some(match sum {
            None => p,
            Some(acc) => acc + p,
        });
    }
    let mut p = sum.expect("at least one view");
    p /= views.len() as f32;
    Ok(p)
}

type ArrayView4F<'a> = ndarray::ArrayView4<'a, f32>;

/// A copy of `x` `(N,C,H,W)` mirrored along H and/or W.
fn mirror(x: ArrayView4F<'_>, rows: bool, cols: bool) -> Array4<f32> {
    let mut v = x;
    if rows {
        v.invert_axis(Axis(2));
    }
    if cols {
        v.invert_axis(Axis(3));
    }
    v.as_standard_layout().into_owned()
}

/// How prediction went: slices, and the model's time per slice (TTA views included).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    pub slices: usize,
    pub tta: Tta,
    pub seconds_per_slice: f64,
    pub total_seconds: f64,
}

/// The model inputs `(C,S,S)` of one slice given in its source's units (HU or 0…255 grey).
pub fn model_input(pre: &Preprocessing, slice: Array2<f32>) -> Array3<f32> {
    let (h, w) = slice.dim();
    let slice = if (h, w) == (pre.size, pre.size) {
        slice
    } else {
        resize::bilinear(slice.view(), pre.size, pre.size)
    };
    match pre.source {
        SourceKind::Hu => pre.window_hu(slice.view()),
        SourceKind::EightBit => Preprocessing::window_8bit(slice.view()),
    }
}

/// Per-class probabilities `(2,S,S)` back at `h`×`w`.
pub fn at_size(p: ArrayView3<f32>, h: usize, w: usize) -> Array3<f32> {
    let (k, ph, pw) = p.dim();
    if (ph, pw) == (h, w) {
        return p.to_owned();
    }
    let mut out = Array3::zeros((k, h, w));
    for c in 0..k {
        out.index_axis_mut(Axis(0), c)
            .assign(&resize::bilinear(p.index_axis(Axis(0), c), h, w));
    }
    out
}

/// Runs the model over `slices` (each in source units, any size) in batches; returns each
/// slice's probabilities `(2,h,w)` at its own size and the time spent in the model.
fn run(
    bundle: &Bundle,
    slices: &[Array2<f32>],
    config: &PredictConfig,
    progress: &dyn Progress,
) -> Result<(Vec<Array3<f32>>, f64)> {
    let pre = &bundle.preprocessing;
    let channels = pre.channels();
    let mut out = Vec::with_capacity(slices.len());
    let mut model_seconds = 0.0;
    progress.start(slices.len() as u64, "slices");
    for chunk in slices.chunks(config.batch_size) {
        let mut batch = Array4::zeros((chunk.len(), channels, pre.size, pre.size));
        for (i, slice) in chunk.iter().enumerate() {
            batch
                .index_axis_mut(Axis(0), i)
                .assign(&model_input(pre, slice.clone()));
        }
        let started = Instant::now();
        let p = probabilities(bundle, batch.view(), config.tta, config.batch_size)?;
        model_seconds += started.elapsed().as_secs_f64();
        for (i, slice) in chunk.iter().enumerate() {
            let (h, w) = slice.dim();
            out.push(at_size(p.index_axis(Axis(0), i), h, w));
        }
        progress.advance(chunk.len() as u64);
    }
    Ok((out, model_seconds))
}

/// Label image of one slice: 2 where consolidation passes its threshold, else 1 where GGO does.
pub fn labels(p: ArrayView3<f32>, thresholds: [f64; 2]) -> Array2<u8> {
    let (_, h, w) = p.dim();
    Array2::from_shape_fn((h, w), |(y, x)| {
        if f64::from(p[(1, y, x)]) > thresholds[1] {
            2
        } else if f64::from(p[(0, y, x)]) > thresholds[0] {
            1
        } else {
            0
        }
    })
}

/// Where the predicted slices come from.
#[derive(Debug, Clone)]
pub enum PredictInput {
    /// A Kaggle images file `(N,H,W,1)` in HU.
    Kaggle(PathBuf),
    /// An image folder: `root/images/*` or `root/*`, png or jpg, 8-bit grey.
    Folder(PathBuf),
}

/// What [`predict`] wrote.
#[derive(Debug, Clone)]
pub struct Predicted {
    pub timing: Timing,
    /// Overlay tiles (CT with the prediction: GGO red, consolidation green) of the first slices.
    pub overlays: Vec<image::RgbImage>,
}

/// Predicts `input` with `bundle` into `out` (a folder: `masks.npy` for Kaggle input, one
/// `<id>.png` per image for a folder).
pub fn predict(
    bundle: &Bundle,
    input: &PredictInput,
    config: &PredictConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Predicted> {
    config.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let thresholds = [bundle.thresholds.ggo, bundle.thresholds.consolidation];
    let (slices, names): (Vec<Array2<f32>>, Option<Vec<String>>) = match input {
        PredictInput::Kaggle(path) => {
            let images = kaggle::read_images(path)?;
            (
                images
                    .axis_iter(Axis(0))
                    .map(|s| s.index_axis(Axis(2), 0).to_owned())
                    .collect(),
                None,
            )
        }
        PredictInput::Folder(root) => {
            let found = folder::list_images(root)?;
            let mut slices = Vec::with_capacity(found.len());
            for (_, path) in &found {
                slices.push(folder::read_grey(path)?);
            }
            (slices, Some(found.into_iter().map(|(id, _)| id).collect()))
        }
    };
    if slices.is_empty() {
        let (PredictInput::Kaggle(path) | PredictInput::Folder(path)) = input;
        return Err(Error::invalid_data(path, "holds no slices to predict"));
    }
    if bundle.preprocessing.source == SourceKind::Hu && names.is_some() {
        return Err(Error::invalid_data(
            match input {
                PredictInput::Folder(p) | PredictInput::Kaggle(p) => p,
            },
            "the model was trained on HU slices (.npy), this is an 8-bit image folder; predict the same kind of data it was trained on",
        ));
    }
    if bundle.preprocessing.source == SourceKind::EightBit && names.is_none() {
        return Err(Error::invalid_data(
            match input {
                PredictInput::Folder(p) | PredictInput::Kaggle(p) => p,
            },
            "the model was trained on an 8-bit image folder, these are HU slices; predict the same kind of data it was trained on",
        ));
    }
    let started = Instant::now();
    let (probs, model_seconds) = run(bundle, &slices, config, progress)?;
    match &names {
        None => {
            let (n, h, w) = (slices.len(), slices[0].dim().0, slices[0].dim().1);
            let mut masks = Array4::from_elem((n, h, w, 2), false);
            for (i, p) in probs.iter().enumerate() {
                for (c, &t) in thresholds.iter().enumerate() {
                    masks
                        .slice_mut(s![i, .., .., c])
                        .zip_mut_with(&p.index_axis(Axis(0), c), |m, &v| *m = f64::from(v) > t);
                }
            }
            npy::write(&out.join("masks.npy"), &masks)?;
        }
        Some(ids) => {
            for (id, p) in ids.iter().zip(&probs) {
                let label = labels(p.view(), thresholds);
                let (h, w) = label.dim();
                let picture = image::GrayImage::from_raw(
                    w as u32,
                    h as u32,
                    label.into_raw_vec_and_offset().0,
                )
                .expect("buffer of h×w");
                let path = out.join(format!("{id}.png"));
                picture
                    .save(&path)
                    .map_err(|e| Error::invalid_data(&path, format!("cannot write PNG: {e}")))?;
            }
        }
    }
    let overlays = slices
        .iter()
        .zip(&probs)
        .take(config.overlays)
        .map(|(slice, p)| {
            let shown = match bundle.preprocessing.source {
                SourceKind::Hu => bundle.preprocessing.windows[0].apply_all(slice.view()),
                SourceKind::EightBit => slice.mapv(|v| v / 255.0),
            };
            crate::render::overlay(shown.view(), labels(p.view(), thresholds).view())
        })
        .collect();
    let n = slices.len().max(1);
    Ok(Predicted {
        timing: Timing {
            slices: slices.len(),
            tta: config.tta,
            seconds_per_slice: model_seconds / n as f64,
            total_seconds: started.elapsed().as_secs_f64(),
        },
        overlays,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::intensity::{Normalize, Window};
    use crate::model::{EncoderKind, UnetConfig};
    use crate::training::{DeviceChoice, Thresholds, TrainConfig, load_bundle, write_bundle};
    use burn::tensor::Device;

    /// A bundle of a small plain U-Net with random weights; with `symmetric`, every kernel is
    /// averaged with its mirror images, which makes the whole network commute with flips (3×3
    /// convolutions, BatchNorm, ReLU, 2×2 max-pooling and 2× upsampling on even sizes all do).
    fn bundle(dir: &Path, symmetric: bool) -> Bundle {
        let device = Device::flex();
        device.seed(3);
        let config = TrainConfig {
            model: UnetConfig {
                encoder: EncoderKind::Plain,
                encoder_depth: 3,
                decoder_channels: Some(vec![16, 8, 8]),
                ..Default::default()
            },
            device: DeviceChoice::Cpu,
            ..Default::default()
        };
        let model = config.model.init(&device).unwrap();
        let pre = Preprocessing {
            source: SourceKind::Hu,
            windows: vec![Window::LUNG],
            size: 32,
            normalize: Normalize::None,
            shift: vec![0.0],
            scale: vec![1.0],
        };
        let thresholds = Thresholds {
            ggo: 0.5,
            consolidation: 0.5,
        };
        write_bundle(dir, &model, &config, &pre, thresholds).unwrap();
        if symmetric {
            let path = dir.join(crate::training::bundle_weights_file());
            let bytes = std::fs::read(&path).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut tensors = Vec::new();
            for (name, view) in file.tensors() {
                let shape = view.shape().to_vec();
                let mut values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if shape.len() == 4 && shape[2] > 1 {
                    let (kh, kw) = (shape[2], shape[3]);
                    for kernel in values.chunks_mut(kh * kw) {
                        let original = kernel.to_vec();
                        for y in 0..kh {
                            for x in 0..kw {
                                let (my, mx) = (kh - 1 - y, kw - 1 - x);
                                kernel[y * kw + x] = (original[y * kw + x]
                                    + original[my * kw + x]
                                    + original[y * kw + mx]
                                    + original[my * kw + mx])
                                    / 4.0;
                            }
                        }
                    }
                }
                let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((name, shape, data));
            }
            let views: Vec<_> = tensors
                .iter()
                .map(|(n, s, d)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                            .unwrap(),
                    )
                })
                .collect();
            std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        }
        load_bundle(dir, &device).unwrap()
    }

    fn worst_difference(bundle: &Bundle, tta: Tta) -> f32 {
        let images = Array4::from_shape_fn((2, 1, 32, 32), |(i, _, y, x)| {
            (((i * 7 + y * 13 + x * 5) % 17) as f32 / 16.0).powi(2)
        });
        let plain = probabilities(bundle, images.view(), Tta::None, 2).unwrap();
        let augmented = probabilities(bundle, images.view(), tta, 2).unwrap();
        (plain - augmented).iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    #[test]
    fn tta_of_a_flip_equivariant_model_equals_no_tta() {
        let dir = tempfile::tempdir().unwrap();
        let symmetric = bundle(dir.path(), true);
        for tta in [Tta::Flip2, Tta::Flip4] {
            let worst = worst_difference(&symmetric, tta);
            assert!(worst < 1e-5, "{tta:?} differs by {worst}");
        }
        // The check has teeth: a network with ordinary kernels is not flip-equivariant.
        let dir = tempfile::tempdir().unwrap();
        let ordinary = bundle(dir.path(), false);
        let ordinary = worst_difference(&ordinary, Tta::Flip4);
        assert!(
            ordinary > 1e-4,
            "ordinary kernels differ by only {ordinary}"
        );
    }

    #[test]
    fn an_empty_images_file_is_an_input_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let model = bundle(&dir.path().join("bundle"), false);
        let images = dir.path().join("empty.npy");
        crate::data::kaggle::write_images(&images, &ndarray::Array4::<f64>::zeros((0, 8, 8, 1)))
            .unwrap();
        let err = predict(
            &model,
            &PredictInput::Kaggle(images),
            &PredictConfig::default(),
            &dir.path().join("out"),
            &crate::NoProgress,
        )
        .unwrap_err();
        assert!(err.is_input_error());
        assert!(
            err.to_string()
                .ends_with("empty.npy: holds no slices to predict"),
            "{err}"
        );
    }

    #[test]
    fn labels_put_consolidation_over_ggo() {
        let p = Array3::from_shape_vec((2, 1, 3), vec![0.9, 0.9, 0.1, 0.7, 0.2, 0.8]).unwrap();
        assert_eq!(
            labels(p.view(), [0.5, 0.5]).into_raw_vec_and_offset().0,
            [2, 1, 2]
        );
    }
}
