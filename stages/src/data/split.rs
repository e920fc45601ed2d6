//! The train/validation split. Validation slices come from MedSeg only, because the competition's
//! test slices are MedSeg slices; Radiopaedia slices always train, so its volumes are never cut.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use ndarray::{Array3, Array4, Axis};

use super::folder::{self, LabelMap};
use super::intensity::{Normalize, Preprocessing, SourceKind, Window};
use super::{kaggle, labels, resize, volumes};
use crate::volume;
use crate::{Error, Progress, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Number of folds over the MedSeg slices; 1 means a single split by `val_fraction`.
    pub folds: usize,
    /// The fold whose validation part becomes `val` (0-based).
    pub fold: usize,
    /// Share of MedSeg slices held out when `folds = 1`.
    pub val_fraction: f64,
    /// Width and height of the slices after resizing; unset keeps the size of `.npy` sources
    /// (image folders, whose slices differ in size, need it).
    pub size: Option<usize>,
    /// HU windows, one input channel each (for HU sources; 8-bit image folders use v/255).
    pub windows: Vec<Window>,
    pub normalize: Normalize,
    /// For image folders and label volumes: which mask values are background, GGO,
    /// consolidation and (optionally) other lung.
    pub label_map: LabelMap,
    /// For CT volumes: the model's pixel spacing in mm. Slices are resampled to it in plane and
    /// centred on the `size`×`size` canvas (cropped or padded with air); the bundle keeps it, so
    /// predict and the endpoint resample volumes the same way. Unset resizes slices to `size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_mm: Option<f64>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            fold: 0,
            val_fraction: 0.2,
            size: None,
            windows: vec![Window::LUNG],
            normalize: Normalize::Zscore,
            label_map: LabelMap::default(),
            pixel_mm: None,
        }
    }
}

impl SplitConfig {
    pub fn validate(&self) -> Result<()> {
        if self.folds == 0 {
            return Err(Error::invalid_param("folds", "expected at least 1"));
        }
        if self.fold >= self.folds {
            return Err(Error::invalid_param(
                "fold",
                format!(
                    "expected 0…{} (there are {} folds), got {}",
                    self.folds - 1,
                    self.folds,
                    self.fold
                ),
            ));
        }
        if let Some(size) = self.size
            && !(16..=2048).contains(&size)
        {
            return Err(Error::invalid_param(
                "size",
                format!("expected 16…2048 pixels, got {size}"),
            ));
        }
        if self.windows.is_empty() {
            return Err(Error::invalid_param(
                "windows",
                "give at least one window, e.g. [{ center = -600, width = 1500 }]",
            ));
        }
        if let Some(w) = self
            .windows
            .iter()
            .find(|w| w.width.is_nan() || w.width <= 0.0 || !w.center.is_finite())
        {
            return Err(Error::invalid_param(
                "windows",
                format!(
                    "a window needs a finite center and a positive width, got center {} width {}",
                    w.center, w.width
                ),
            ));
        }
        if let Some(mm) = self.pixel_mm
            && !(mm.is_finite() && (0.05..=10.0).contains(&mm))
        {
            return Err(Error::invalid_param(
                "pixel_mm",
                format!("expected a pixel spacing of 0.05…10 mm, got {mm}"),
            ));
        }
        if self.folds == 1 && !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::invalid_param(
                "val_fraction",
                format!(
                    "expected a number strictly between 0 and 1, got {}",
                    self.val_fraction
                ),
            ));
        }
        Ok(())
    }
}

/// What a split draws from: the Kaggle files (validation from MedSeg) or an image folder (all of
/// it eligible for validation).
#[derive(Debug, Clone)]
pub enum SplitInputs {
    Kaggle {
        medseg_images: PathBuf,
        medseg_masks: PathBuf,
        radiopedia: Option<(PathBuf, PathBuf)>,
    },
    Folder(PathBuf),
    /// Image volumes (`.nii[.gz]` in HU) and label volumes of the same names. Folds split by
    /// volume, so slices of one patient never sit on both sides.
    Volumes {
        images: PathBuf,
        labels: PathBuf,
    },
}

/// A slice named by its source and index, written `medseg/12` (`volume/<name>/<k>` for volumes).
pub type SliceRef = String;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    pub train: Vec<SliceRef>,
    pub val: Vec<SliceRef>,
}

/// The split artifact, like nnU-Net's `splits_final.json` plus the chosen fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub seed: u64,
    pub sources: Vec<Source>,
    pub fold: usize,
    pub train: Vec<SliceRef>,
    pub val: Vec<SliceRef>,
    pub folds: Vec<Fold>,
    /// Original (height, width) of slices that were resized from another size (image folders).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub original_sizes: BTreeMap<SliceRef, [usize; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub slices: usize,
}

fn count_pair(images: &Path, masks: &Path) -> Result<usize> {
    kaggle::check_pair(images, masks)?;
    kaggle::slice_count(images)
}

/// Assigns slices to folds. `eligible` may validate; `always_train` never does.
fn make_folds(
    eligible: &[SliceRef],
    always_train: &[SliceRef],
    config: &SplitConfig,
    seed: u64,
) -> Vec<Fold> {
    let n = eligible.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let parts: Vec<Vec<usize>> = if config.folds == 1 {
        let n_val = ((n as f64 * config.val_fraction).round() as usize).clamp(1, n - 1);
        vec![order[..n_val].to_vec(), order[n_val..].to_vec()]
    } else {
        (0..config.folds)
            .map(|f| {
                order
                    .iter()
                    .copied()
                    .skip(f)
                    .step_by(config.folds)
                    .collect()
            })
            .collect()
    };
    (0..config.folds)
        .map(|f| {
            let mut val = parts[f].clone();
            val.sort_unstable();
            let mut train: Vec<usize> = parts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != f)
                .flat_map(|(_, p)| p.clone())
                .collect();
            train.sort_unstable();
            let mut train: Vec<SliceRef> = train.iter().map(|&i| eligible[i].clone()).collect();
            train.extend(always_train.iter().cloned());
            Fold {
                train,
                val: val.iter().map(|&i| eligible[i].clone()).collect(),
            }
        })
        .collect()
}

fn kaggle_refs(name: &str, n: usize) -> Vec<SliceRef> {
    (0..n).map(|i| format!("{name}/{i}")).collect()
}

/// The manifest alone: which slice goes where. Reads only file headers.
pub fn split(inputs: &SplitInputs, config: &SplitConfig, seed: u64) -> Result<SplitManifest> {
    config.validate()?;
    let (sources, eligible, always_train, at) = match inputs {
        SplitInputs::Kaggle {
            medseg_images,
            medseg_masks,
            radiopedia,
        } => {
            let medseg = count_pair(medseg_images, medseg_masks)?;
            let mut sources = vec![Source {
                name: "medseg".into(),
                slices: medseg,
            }];
            let mut always = Vec::new();
            if let Some((images, masks)) = radiopedia {
                let n = count_pair(images, masks)?;
                sources.push(Source {
                    name: "radiopedia".into(),
                    slices: n,
                });
                always = kaggle_refs("radiopedia", n);
            }
            (
                sources,
                kaggle_refs("medseg", medseg),
                always,
                medseg_images.clone(),
            )
        }
        SplitInputs::Volumes { images, labels } => {
            return split_volumes(images, labels, config, seed);
        }
        SplitInputs::Folder(root) => {
            let ids: Vec<SliceRef> = folder::list(root)?
                .into_iter()
                .map(|(id, _)| format!("folder/{id}"))
                .collect();
            (
                vec![Source {
                    name: "folder".into(),
                    slices: ids.len(),
                }],
                ids,
                Vec::new(),
                root.join("images"),
            )
        }
    };
    let needed = if config.folds == 1 { 2 } else { config.folds };
    if eligible.len() < needed {
        return Err(Error::invalid_data(
            &at,
            format!(
                "has {} slices, too few for {needed} parts; lower params.folds",
                eligible.len()
            ),
        ));
    }
    let folds = make_folds(&eligible, &always_train, config, seed);
    let chosen = folds[config.fold].clone();
    Ok(SplitManifest {
        seed,
        sources,
        fold: config.fold,
        train: chosen.train,
        val: chosen.val,
        folds,
        original_sizes: BTreeMap::new(),
    })
}

/// Volumes: folds over the volumes, each volume's slices kept together. Reads only headers.
fn split_volumes(
    images: &Path,
    labels: &Path,
    config: &SplitConfig,
    seed: u64,
) -> Result<SplitManifest> {
    let pairs = volumes::pairs(images, labels)?;
    let needed = if config.folds == 1 { 2 } else { config.folds };
    if pairs.len() < needed {
        return Err(Error::invalid_data(
            images,
            format!(
                "has {} volumes, too few for {needed} parts (folds split by volume); lower params.folds or add volumes",
                pairs.len()
            ),
        ));
    }
    let mut sources = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        let shape = volume::nifti::read_shape(&pair.image)?;
        sources.push(Source {
            name: pair.name.clone(),
            slices: shape[2],
        });
    }
    let names: Vec<SliceRef> = sources.iter().map(|s| s.name.clone()).collect();
    let expand = |names: &[SliceRef]| -> Vec<SliceRef> {
        names
            .iter()
            .flat_map(|name| {
                let n = sources
                    .iter()
                    .find(|s| &s.name == name)
                    .map_or(0, |s| s.slices);
                (0..n).map(move |k| format!("volume/{name}/{k}"))
            })
            .collect()
    };
    let folds: Vec<Fold> = make_folds(&names, &[], config, seed)
        .into_iter()
        .map(|f| Fold {
            train: expand(&f.train),
            val: expand(&f.val),
        })
        .collect();
    let chosen = folds[config.fold].clone();
    Ok(SplitManifest {
        seed,
        sources,
        fold: config.fold,
        train: chosen.train,
        val: chosen.val,
        folds,
        original_sizes: BTreeMap::new(),
    })
}

/// The split artifact: the manifest, the fixed preprocessing, and the preprocessed slices of the
/// chosen fold — images `(N,C,S,S)` windowed to [0,1] (normalisation is applied by the model
/// input, with `preprocessing`), labels `(N,S,S)`.
pub struct SplitData {
    pub manifest: SplitManifest,
    pub preprocessing: Preprocessing,
    pub train_images: Array4<f32>,
    pub train_labels: Array3<u8>,
    pub val_images: Array4<f32>,
    pub val_labels: Array3<u8>,
}

/// One slice before stacking: windowed channels and labels, resized.
type Prepared = (Array3<f32>, ndarray::Array2<u8>);

fn prepare_hu(
    hu: ndarray::ArrayView2<f32>,
    mask: ndarray::ArrayView3<bool>,
    windows: &[Window],
    size: usize,
) -> Prepared {
    let p = Preprocessing {
        source: SourceKind::Hu,
        windows: windows.to_vec(),
        size,
        normalize: Normalize::None,
        shift: vec![],
        scale: vec![],
        pixel_mm: None,
    };
    let (h, w) = hu.dim();
    let resized;
    let hu = if (h, w) == (size, size) {
        hu
    } else {
        resized = resize::bilinear(hu, size, size);
        resized.view()
    };
    let labels = labels::from_masks(mask);
    (p.window_hu(hu), resize::nearest(labels.view(), size, size))
}

fn stack(slices: Vec<Prepared>, channels: usize, size: usize) -> (Array4<f32>, Array3<u8>) {
    let n = slices.len();
    let mut images = Array4::zeros((n, channels, size, size));
    let mut labels = Array3::zeros((n, size, size));
    for (i, (x, l)) in slices.into_iter().enumerate() {
        images.index_axis_mut(Axis(0), i).assign(&x);
        labels.index_axis_mut(Axis(0), i).assign(&l);
    }
    (images, labels)
}

/// The whole split: manifest, preprocessed slices and the normalisation fitted on training slices.
pub fn assemble(
    inputs: &SplitInputs,
    config: &SplitConfig,
    seed: u64,
    progress: &dyn Progress,
) -> Result<SplitData> {
    let mut manifest = split(inputs, config, seed)?;
    let wanted: Vec<&SliceRef> = manifest.train.iter().chain(&manifest.val).collect();
    progress.start(wanted.len() as u64, "slices");
    let (source, size, channels, mut prepared): (
        SourceKind,
        usize,
        usize,
        BTreeMap<SliceRef, Prepared>,
    ) = match inputs {
        SplitInputs::Kaggle {
            medseg_images,
            medseg_masks,
            radiopedia,
        } => {
            let native = kaggle::image_header(medseg_images)?.shape[1];
            let size = config.size.unwrap_or(native);
            let mut prepared = BTreeMap::new();
            let mut files = vec![("medseg", medseg_images, medseg_masks)];
            if let Some((i, m)) = radiopedia {
                files.push(("radiopedia", i, m));
            }
            for (name, images, masks) in files {
                let (images, masks) = (kaggle::read_images(images)?, kaggle::read_masks(masks)?);
                let slices: Vec<(SliceRef, Prepared)> = (0..images.dim().0)
                    .into_par_iter()
                    .map(|i| {
                        let p = prepare_hu(
                            images.index_axis(Axis(0), i).index_axis(Axis(2), 0),
                            masks.index_axis(Axis(0), i),
                            &config.windows,
                            size,
                        );
                        progress.advance(1);
                        (format!("{name}/{i}"), p)
                    })
                    .collect();
                prepared.extend(slices);
            }
            (SourceKind::Hu, size, config.windows.len(), prepared)
        }
        SplitInputs::Folder(root) => {
            let size = config.size.ok_or_else(|| {
                Error::invalid_param("size", "an image-folder dataset needs params.size (its slices differ in size), e.g. size = 256")
            })?;
            let ids = folder::list(root)?;
            let slices = ids
                .par_iter()
                .map(|(id, path)| {
                    let slice = folder::read(root, id, path, &config.label_map)?;
                    let original = [slice.image.dim().0, slice.image.dim().1];
                    let image = Preprocessing::window_8bit(
                        resize::bilinear(slice.image.view(), size, size).view(),
                    );
                    let labels = resize::nearest(slice.labels.view(), size, size);
                    progress.advance(1);
                    Ok((format!("folder/{id}"), (image, labels), original))
                })
                // Collected in id order first, so the error reported is always the first file's.
                .collect::<Vec<Result<_>>>()
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            let mut prepared = BTreeMap::new();
            for (r, p, original) in slices {
                if original != [size, size] {
                    manifest.original_sizes.insert(r.clone(), original);
                }
                prepared.insert(r, p);
            }
            (SourceKind::EightBit, size, 1, prepared)
        }
        SplitInputs::Volumes { images, labels } => {
            let pairs = volumes::pairs(images, labels)?;
            let size = match config.size {
                Some(size) => size,
                None => {
                    let first = volume::nifti::read_shape(&pairs[0].image)?;
                    if first[0] != first[1] {
                        return Err(Error::invalid_param(
                            "size",
                            format!(
                                "{} has {}×{} slices; give params.size (the model's width and height)",
                                pairs[0].image.display(),
                                first[0],
                                first[1]
                            ),
                        ));
                    }
                    first[0]
                }
            };
            let mut prepared = BTreeMap::new();
            for pair in &pairs {
                let (volume, mapped) = volumes::read_pair(pair, &config.label_map)?;
                for (k, (hu, lab)) in volumes::slices(&volume, &mapped, config.pixel_mm, size)
                    .into_iter()
                    .enumerate()
                {
                    let image = Preprocessing {
                        source: SourceKind::Hu,
                        windows: config.windows.clone(),
                        size,
                        normalize: Normalize::None,
                        shift: vec![],
                        scale: vec![],
                        pixel_mm: None,
                    }
                    .window_hu(hu.view());
                    prepared.insert(format!("volume/{}/{k}", pair.name), (image, lab));
                    progress.advance(1);
                }
            }
            (SourceKind::Hu, size, config.windows.len(), prepared)
        }
    };
    let mut take = |refs: &[SliceRef]| -> Vec<Prepared> {
        refs.iter().filter_map(|r| prepared.remove(r)).collect()
    };
    let (train_images, train_labels) = stack(take(&manifest.train), channels, size);
    let (val_images, val_labels) = stack(take(&manifest.val), channels, size);
    let windows = if source == SourceKind::Hu {
        config.windows.clone()
    } else {
        Vec::new()
    };
    let mut preprocessing =
        Preprocessing::fit(source, windows, size, config.normalize, &train_images)?;
    if matches!(inputs, SplitInputs::Volumes { .. }) {
        preprocessing.pixel_mm = config.pixel_mm;
    }
    Ok(SplitData {
        manifest,
        preprocessing,
        train_images,
        train_labels,
        val_images,
        val_labels,
    })
}

/// Writes the manifest as pretty JSON, synced.
pub fn write_manifest(path: &Path, manifest: &SplitManifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::invalid_data(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;
    use std::collections::BTreeSet;

    fn files(dir: &Path, name: &str, n: usize) -> (PathBuf, PathBuf) {
        let (i, m) = (
            dir.join(format!("images_{name}.npy")),
            dir.join(format!("masks_{name}.npy")),
        );
        kaggle::write_images(&i, &Array4::zeros((n, 4, 4, 1))).unwrap();
        kaggle::write_masks(&m, &Array4::from_elem((n, 4, 4, 4), false)).unwrap();
        (i, m)
    }

    #[test]
    fn folds_are_disjoint_cover_medseg_and_keep_radiopedia_in_train() {
        let dir = tempfile::tempdir().unwrap();
        let (mi, mm) = files(dir.path(), "medseg", 23);
        let radiopedia = Some(files(dir.path(), "radiopedia", 7));
        let inputs = SplitInputs::Kaggle {
            medseg_images: mi,
            medseg_masks: mm,
            radiopedia,
        };
        let manifest = split(&inputs, &SplitConfig::default(), 7).unwrap();
        let mut all_val = BTreeSet::new();
        for fold in &manifest.folds {
            let (t, v): (BTreeSet<_>, BTreeSet<_>) =
                (fold.train.iter().collect(), fold.val.iter().collect());
            assert!(t.is_disjoint(&v));
            assert!(v.iter().all(|s| s.starts_with("medseg/")));
            assert_eq!(t.iter().filter(|s| s.starts_with("radiopedia/")).count(), 7);
            assert_eq!(t.len() + v.len(), 30);
            all_val.extend(v);
        }
        assert_eq!(
            all_val.len(),
            23,
            "every medseg slice validates exactly once"
        );
        assert_eq!(
            manifest,
            split(&inputs, &SplitConfig::default(), 7).unwrap(),
            "deterministic"
        );
        assert_ne!(
            manifest.val,
            split(&inputs, &SplitConfig::default(), 8).unwrap().val
        );
    }

    #[test]
    fn assemble_windows_resizes_and_fits_normalisation_on_train_only() {
        use crate::data::phantom::{PhantomConfig, generate};
        let dir = tempfile::tempdir().unwrap();
        let set = generate(
            &PhantomConfig {
                slices: 6,
                size: 64,
                ..Default::default()
            },
            3,
            &crate::NoProgress,
        )
        .unwrap();
        let (mi, mm) = (dir.path().join("i.npy"), dir.path().join("m.npy"));
        kaggle::write_images(&mi, &set.images).unwrap();
        kaggle::write_masks(&mm, &set.masks).unwrap();
        let inputs = SplitInputs::Kaggle {
            medseg_images: mi,
            medseg_masks: mm,
            radiopedia: None,
        };
        let config = SplitConfig {
            folds: 3,
            size: Some(32),
            windows: vec![Window::LUNG, Window::MEDIASTINAL],
            ..Default::default()
        };
        let data = assemble(&inputs, &config, 1, &crate::NoProgress).unwrap();
        assert_eq!(data.train_images.dim(), (4, 2, 32, 32));
        assert_eq!(data.val_images.dim(), (2, 2, 32, 32));
        assert_eq!(data.val_labels.dim(), (2, 32, 32));
        assert!(data.train_images.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(data.train_labels.iter().any(|&l| l == labels::LABEL_GGO));
        let lung = data.train_images.index_axis(Axis(1), 0);
        let mean = lung.iter().map(|&v| f64::from(v)).sum::<f64>() / lung.len() as f64;
        assert!(
            (f64::from(data.preprocessing.shift[0]) - mean).abs() < 1e-4,
            "z-score mean comes from the training slices"
        );
        assert_eq!(data.preprocessing.channels(), 2);
        // The lung window sees lung parenchyma (−850 HU) as dark but not black; labels follow it.
        let first = data.train_labels.index_axis(Axis(0), 0);
        let lung_pixels: Vec<f32> = first
            .indexed_iter()
            .filter(|(_, l)| **l == labels::LABEL_OTHER_LUNG)
            .map(|((y, x), _)| data.train_images[[0, 0, y, x]])
            .collect();
        let median = {
            let mut v = lung_pixels.clone();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        assert!(
            (0.1..0.5).contains(&median),
            "lung parenchyma at {median} in the lung window"
        );
    }

    #[test]
    fn single_split_by_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let (mi, mm) = files(dir.path(), "medseg", 10);
        let inputs = SplitInputs::Kaggle {
            medseg_images: mi,
            medseg_masks: mm,
            radiopedia: None,
        };
        let config = SplitConfig {
            folds: 1,
            fold: 0,
            val_fraction: 0.3,
            ..Default::default()
        };
        let manifest = split(&inputs, &config, 1).unwrap();
        assert_eq!((manifest.train.len(), manifest.val.len()), (7, 3));
        let bad = SplitConfig {
            folds: 3,
            fold: 3,
            ..Default::default()
        };
        assert!(
            split(&inputs, &bad, 1)
                .unwrap_err()
                .to_string()
                .contains("params.fold: expected 0…2")
        );
    }
}
