//! Prediction: a model bundle applied to new slices, with optional test-time augmentation.
//!
//! - Kaggle `.npy` images `(N,H,W,1)` in HU → `masks.npy` `(N,H,W,2)` bool (channel 0 GGO,
//!   1 consolidation), the layout `package-submission` reads.
//! - An image folder (`images/<id>.png|jpg`, or the images directly) → one label PNG per input,
//!   same id, at the input's own size: 0 background, 1 GGO, 2 consolidation.
//!
//! - A CT volume (`.nii[.gz]`, a DICOM series folder, or a folder of `.nii[.gz]` files) →
//!   `<name>.nii.gz`, a label map with exactly the input's affine and shape (0 background,
//!   1 GGO, 2 consolidation, 3 other lung, from an approximate lung mask), `<name>.report.json`
//!   and `<name>.report.html` (lesion and lung mL, involvement %, MosMed grade), and with
//!   `probability_maps`, `<name>.ggo.nii.gz` and `<name>.consolidation.nii.gz`.
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
use crate::{Error, Progress, Result, volume};

mod volume_slices;
pub use volume_slices::{VolumeLesions, VolumeSlices};

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
    /// For volume input: also write each class's probabilities as a float NIfTI.
    pub probability_maps: bool,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            tta: Tta::None,
            batch_size: 4,
            overlays: 8,
            device: crate::training::DeviceChoice::Auto,
            probability_maps: false,
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
    /// CT volumes in HU: a `.nii[.gz]` file, a DICOM folder, or a folder of `.nii[.gz]` files.
    Volumes(PathBuf),
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
    if let PredictInput::Volumes(path) = input {
        return predict_volumes(bundle, path, config, out, progress);
    }
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
        PredictInput::Volumes(_) => unreachable!("handled above"),
    };
    if slices.is_empty() {
        let (PredictInput::Kaggle(path) | PredictInput::Folder(path) | PredictInput::Volumes(path)) =
            input;
        return Err(Error::invalid_data(path, "holds no slices to predict"));
    }
    if bundle.preprocessing.source == SourceKind::Hu && names.is_some() {
        return Err(Error::invalid_data(
            match input {
                PredictInput::Folder(p) | PredictInput::Kaggle(p) | PredictInput::Volumes(p) => p,
            },
            "the model was trained on HU slices (.npy), this is an 8-bit image folder; predict the same kind of data it was trained on",
        ));
    }
    if bundle.preprocessing.source == SourceKind::EightBit && names.is_none() {
        return Err(Error::invalid_data(
            match input {
                PredictInput::Folder(p) | PredictInput::Kaggle(p) | PredictInput::Volumes(p) => p,
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

/// Predicts every volume at `path`: a label NIfTI aligned with each, its report (JSON and HTML)
/// and optionally the probability maps.
fn predict_volumes(
    bundle: &Bundle,
    path: &Path,
    config: &PredictConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Predicted> {
    if bundle.preprocessing.source != SourceKind::Hu {
        return Err(Error::invalid_data(
            path,
            "the model was trained on an 8-bit image folder, these are CT volumes in HU; \
             predict the same kind of data it was trained on",
        ));
    }
    let thresholds = [bundle.thresholds.ggo, bundle.thresholds.consolidation];
    let volumes = volume::read_all(path)?;
    let started = Instant::now();
    let (mut model_seconds, mut slices) = (0.0, 0);
    let mut overlays = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for v in &volumes {
        let mut name = v.name.clone();
        let mut n = 1;
        while !used.insert(name.clone()) {
            n += 1;
            name = format!("{}_{n}", v.name);
        }
        for w in &v.warnings {
            tracing::warn!(volume = %name, "{w}");
        }
        let slices_of = VolumeSlices::new(&bundle.preprocessing, v);
        let mut found = VolumeLesions::new(v.shape(), thresholds, config.probability_maps);
        progress.start(slices_of.len() as u64, "slices");
        for start in (0..slices_of.len()).step_by(config.batch_size) {
            let range = start..(start + config.batch_size).min(slices_of.len());
            let inputs = slices_of.inputs(range.clone());
            let began = Instant::now();
            let p = probabilities(bundle, inputs.view(), config.tta, config.batch_size)?;
            model_seconds += began.elapsed().as_secs_f64();
            for (i, k) in range.clone().enumerate() {
                found.set(k, slices_of.back(p.index_axis(Axis(0), i)).view());
            }
            progress.advance(range.len() as u64);
        }
        slices += slices_of.len();
        let (label_map, report, _) = volume::report::assess(v, &found.labels);
        volume::nifti::write_labels(&out.join(format!("{name}.nii.gz")), label_map.view(), v)?;
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        write_text(&out.join(format!("{name}.report.json")), &(json + "\n"))?;
        write_text(
            &out.join(format!("{name}.report.html")),
            &report.html(v, &label_map, 4)?,
        )?;
        if let Some(maps) = &found.probabilities {
            for (class, map) in ["ggo", "consolidation"].iter().zip(maps) {
                volume::nifti::write_map(
                    &out.join(format!("{name}.{class}.nii.gz")),
                    map.view(),
                    v,
                )?;
            }
        }
        // Overlays: the slices with the most lesion, in order.
        let wanted = config.overlays.saturating_sub(overlays.len());
        for k in volume::report::most_involved(&label_map, wanted) {
            let shown = bundle.preprocessing.windows[0].apply_all(slices_of.image(k).view());
            let lab = label_map.index_axis(Axis(2), k).t().to_owned();
            overlays.push(crate::render::overlay(shown.view(), lab.view()));
        }
        tracing::info!(
            volume = %name,
            involvement = report.involvement_percent.whole,
            grade = %report.mosmed_grade,
            "predicted"
        );
    }
    Ok(Predicted {
        timing: Timing {
            slices,
            tta: config.tta,
            seconds_per_slice: model_seconds / slices.max(1) as f64,
            total_seconds: started.elapsed().as_secs_f64(),
        },
        overlays,
    })
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
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
            pixel_mm: None,
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
    fn a_volume_gets_an_aligned_label_nifti_and_a_report() {
        use crate::volume::{Affine, Source, Volume, dicom::SeriesInfo};
        let dir = tempfile::tempdir().unwrap();
        let mut model = bundle(&dir.path().join("bundle"), false);
        // An oblique, LPS-ordered grid of 40×36×3 voxels written as NIfTI through the DICOM
        // path's header synthesis, then read back as the input.
        let hu = Array3::from_shape_fn((40, 36, 3), |(i, j, k)| {
            let (x, y) = (i as f32 - 20.0, j as f32 - 18.0);
            if (x / 18.0).powi(2) + (y / 15.0).powi(2) < 1.0 {
                if ((x.abs() - 8.0) / 5.0).powi(2) + (y / 9.0).powi(2) < 1.0 {
                    -850.0 + 10.0 * k as f32
                } else {
                    40.0
                }
            } else {
                -1000.0
            }
        });
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let affine = Affine::from_columns(
            [-0.8 * s, -0.8 * s, 0.0],
            [0.8 * s, -0.8 * s, 0.0],
            [0.0, 0.0, 2.5],
            [10.0, -20.0, 30.0],
        );
        let source = Volume {
            hu: hu.clone(),
            affine,
            name: "case".into(),
            source: Source::Dicom(SeriesInfo {
                series_uid: "1.2".into(),
                modality: "CT".into(),
                ..Default::default()
            }),
            warnings: vec![],
        };
        let input = dir.path().join("case.nii.gz");
        crate::volume::nifti::write_map(&input, hu.view(), &source).unwrap();
        let config = PredictConfig {
            probability_maps: true,
            ..PredictConfig::default()
        };
        let out = dir.path().join("out");
        let done = predict(
            &model,
            &PredictInput::Volumes(input.clone()),
            &config,
            &out,
            &crate::NoProgress,
        )
        .unwrap();
        assert_eq!(done.timing.slices, 3);
        let read = |p: &Path| crate::volume::nifti::read(p).unwrap();
        let (original, labels) = (read(&input), read(&out.join("case.nii.gz")));
        assert_eq!(labels.shape(), original.shape());
        assert_eq!(labels.affine, original.affine);
        assert!(labels.hu.iter().all(|&l| [0.0, 1.0, 2.0, 3.0].contains(&l)));
        for class in ["ggo", "consolidation"] {
            let p = read(&out.join(format!("case.{class}.nii.gz")));
            assert_eq!(p.affine, original.affine);
            assert!(p.hu.iter().all(|&v| (0.0..=1.0).contains(&v)));
        }
        let report: crate::volume::report::VolumeReport =
            serde_json::from_str(&std::fs::read_to_string(out.join("case.report.json")).unwrap())
                .unwrap();
        assert_eq!(report.shape, [40, 36, 3]);
        assert!(report.lung_ml.whole > 0.0, "{report:?}");
        let html = std::fs::read_to_string(out.join("case.report.html")).unwrap();
        assert!(html.contains(&report.mosmed_grade));
        // An 8-bit model refuses volumes.
        model.preprocessing.source = SourceKind::EightBit;
        let err = predict(
            &model,
            &PredictInput::Volumes(input),
            &config,
            &dir.path().join("out2"),
            &crate::NoProgress,
        )
        .unwrap_err();
        assert!(
            err.is_input_error() && err.to_string().contains("8-bit"),
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
