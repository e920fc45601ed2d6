//! The train/validation split. Validation slices come from MedSeg only, because the competition's
//! test slices are MedSeg slices; Radiopaedia slices always train, so its volumes are never cut.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::kaggle;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Number of folds over the MedSeg slices; 1 means a single split by `val_fraction`.
    pub folds: usize,
    /// The fold whose validation part becomes `val` (0-based).
    pub fold: usize,
    /// Share of MedSeg slices held out when `folds = 1`.
    pub val_fraction: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            fold: 0,
            val_fraction: 0.2,
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

/// The image and mask files a split draws from.
#[derive(Debug, Clone)]
pub struct SplitInputs {
    pub medseg_images: PathBuf,
    pub medseg_masks: PathBuf,
    pub radiopedia: Option<(PathBuf, PathBuf)>,
}

/// A slice named by its source and index, written `medseg/12`.
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

pub fn split(inputs: &SplitInputs, config: &SplitConfig, seed: u64) -> Result<SplitManifest> {
    config.validate()?;
    let medseg = count_pair(&inputs.medseg_images, &inputs.medseg_masks)?;
    let folds_needed = if config.folds == 1 { 2 } else { config.folds };
    if medseg < folds_needed {
        return Err(Error::invalid_data(
            &inputs.medseg_images,
            format!("has {medseg} slices, too few for {folds_needed} parts; lower params.folds"),
        ));
    }
    let mut sources = vec![Source {
        name: "medseg".into(),
        slices: medseg,
    }];
    let mut always_train = Vec::new();
    if let Some((images, masks)) = &inputs.radiopedia {
        let n = count_pair(images, masks)?;
        sources.push(Source {
            name: "radiopedia".into(),
            slices: n,
        });
        always_train.extend((0..n).map(|i| format!("radiopedia/{i}")));
    }

    let mut order: Vec<usize> = (0..medseg).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let parts: Vec<Vec<usize>> = if config.folds == 1 {
        let n_val = ((medseg as f64 * config.val_fraction).round() as usize).clamp(1, medseg - 1);
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
    let n_folds = config.folds;
    let folds: Vec<Fold> = (0..n_folds)
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
            let mut train: Vec<SliceRef> = train.iter().map(|i| format!("medseg/{i}")).collect();
            train.extend(always_train.iter().cloned());
            Fold {
                train,
                val: val.iter().map(|i| format!("medseg/{i}")).collect(),
            }
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
        let inputs = SplitInputs {
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
    fn single_split_by_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let (mi, mm) = files(dir.path(), "medseg", 10);
        let inputs = SplitInputs {
            medseg_images: mi,
            medseg_masks: mm,
            radiopedia: None,
        };
        let config = SplitConfig {
            folds: 1,
            fold: 0,
            val_fraction: 0.3,
        };
        let manifest = split(&inputs, &config, 1).unwrap();
        assert_eq!((manifest.train.len(), manifest.val.len()), (7, 3));
        let bad = SplitConfig {
            folds: 3,
            fold: 3,
            val_fraction: 0.2,
        };
        assert!(
            split(&inputs, &bad, 1)
                .unwrap_err()
                .to_string()
                .contains("params.fold: expected 0…2")
        );
    }
}
