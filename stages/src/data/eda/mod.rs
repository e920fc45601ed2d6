//! Exploratory data analysis, the proposal's first step: an HTML page with PNG plots of what a
//! dataset holds before anything trains on it.
//!
//! - class balance (pixel share of each label) per source (MedSeg, Radiopaedia, a folder) and per
//!   split part;
//! - intensity histograms (HU, or 8-bit grey for image folders) per class, overlaid;
//! - lesion sizes: connected components (8-connected) of GGO, consolidation and any lesion per
//!   slice, in pixels, and in mm² when the pixel spacing is known;
//! - the share of lesion-free slices;
//! - a grid of sample slices with their labels over them.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod report;

pub use report::write_report;

use super::folder::LabelMap;
use super::labels::{LABEL_CONSOLIDATION, LABEL_GGO, LABEL_NAMES};
use super::split::SplitManifest;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdaConfig {
    /// Bins of each intensity histogram.
    pub bins: usize,
    /// Range of the HU histograms; values outside go to the end bins.
    pub hu_range: [f64; 2],
    /// Slices in the sample grid (spread evenly over the slices with lesions, then the others).
    pub samples: usize,
    /// Pixel spacing in mm, when the files do not carry it (the Kaggle arrays do not); lesion
    /// areas are then also given in mm².
    pub pixel_spacing_mm: Option<f64>,
    /// For an image folder: which mask values are background, GGO and consolidation.
    pub label_map: LabelMap,
}

impl Default for EdaConfig {
    fn default() -> Self {
        Self {
            bins: 120,
            hu_range: [-1100.0, 500.0],
            samples: 12,
            pixel_spacing_mm: None,
            label_map: LabelMap::default(),
        }
    }
}

impl EdaConfig {
    pub fn validate(&self) -> Result<()> {
        if !(2..=4096).contains(&self.bins) {
            return Err(Error::invalid_param(
                "bins",
                format!("expected 2…4096, got {}", self.bins),
            ));
        }
        let [lo, hi] = self.hu_range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid_param(
                "hu_range",
                format!("expected [low, high] with low < high, got [{lo}, {hi}]"),
            ));
        }
        if !(1..=256).contains(&self.samples) {
            return Err(Error::invalid_param(
                "samples",
                format!("expected 1…256, got {}", self.samples),
            ));
        }
        if let Some(s) = self.pixel_spacing_mm
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::invalid_param(
                "pixel_spacing_mm",
                format!("expected a positive number of mm, got {s}"),
            ));
        }
        Ok(())
    }
}

/// What the intensities of a source are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Hounsfield units (CT arrays, volumes).
    Hu,
    /// 8-bit grey of a windowed picture (image folders).
    Grey,
}

/// One labelled slice: covseg's labels (0 background, 1 GGO, 2 consolidation, 3 other lung).
pub struct EdaSlice {
    /// `medseg/12`, `folder/<id>`: the split manifest's name of the slice.
    pub id: String,
    pub image: Array2<f32>,
    pub labels: Array2<u8>,
}

/// A set of slices from one place.
pub struct EdaSource {
    pub name: String,
    pub unit: Unit,
    pub slices: Vec<EdaSlice>,
}

/// The numbers of one group of slices (a source, or a source's split part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    pub source: String,
    /// `all`, `train`, `val` or `unused` (in no part of the split).
    pub part: String,
    pub slices: usize,
    /// Label name → share of the group's pixels.
    pub class_share: BTreeMap<String, f64>,
    pub lesion_free_slices: usize,
    pub lesion_free_share: f64,
}

/// Connected lesions of one class over every slice of a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LesionSizes {
    pub source: String,
    /// `ggo`, `consolidation` or `lesion` (either).
    pub class: String,
    pub count: usize,
    /// Percentiles 5, 25, 50, 75, 95 of the component sizes in pixels.
    pub pixels_percentiles: Vec<f64>,
    /// The same in mm², when the pixel spacing is known.
    pub mm2_percentiles: Option<Vec<f64>>,
    /// Every component's size in pixels, ascending: what the size plot draws (not in eda.json).
    #[serde(skip)]
    pub sizes: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdaReport {
    pub groups: Vec<GroupStats>,
    pub lesions: Vec<LesionSizes>,
    pub pixel_spacing_mm: Option<f64>,
}

const PERCENTILES: [f64; 5] = [5.0, 25.0, 50.0, 75.0, 95.0];
const LESIONS: [(&str, &[u8]); 3] = [
    ("ggo", &[LABEL_GGO]),
    ("consolidation", &[LABEL_CONSOLIDATION]),
    ("lesion", &[LABEL_GGO, LABEL_CONSOLIDATION]),
];

/// Sizes in pixels of the 8-connected components of the pixels whose label is in `classes`.
pub fn component_sizes(labels: &Array2<u8>, classes: &[u8]) -> Vec<usize> {
    let (h, w) = labels.dim();
    let mut seen = vec![false; h * w];
    let inside = |i: usize| classes.contains(&labels[[i / w, i % w]]);
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..h * w {
        if seen[start] || !inside(start) {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (y, x) = (i / w, i % w);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (ny, nx) = (y as i64 + dy, x as i64 + dx);
                    if (dy, dx) == (0, 0) || ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if !seen[j] && inside(j) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        sizes.push(size);
    }
    sizes
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

fn has_lesion(labels: &Array2<u8>) -> bool {
    labels
        .iter()
        .any(|&l| l == LABEL_GGO || l == LABEL_CONSOLIDATION)
}

/// The part of the split each slice is in.
fn part_of(manifest: Option<&SplitManifest>, id: &str) -> Option<&'static str> {
    let m = manifest?;
    Some(if m.train.iter().any(|r| r == id) {
        "train"
    } else if m.val.iter().any(|r| r == id) {
        "val"
    } else {
        "unused"
    })
}

fn group(source: &str, part: &str, slices: &[&EdaSlice]) -> GroupStats {
    let mut counts = [0u64; LABEL_NAMES.len()];
    for s in slices {
        for &l in &s.labels {
            counts[usize::from(l).min(LABEL_NAMES.len() - 1)] += 1;
        }
    }
    let total = counts.iter().sum::<u64>().max(1) as f64;
    let free = slices.iter().filter(|s| !has_lesion(&s.labels)).count();
    GroupStats {
        source: source.to_owned(),
        part: part.to_owned(),
        slices: slices.len(),
        class_share: LABEL_NAMES
            .iter()
            .zip(counts)
            .map(|(n, c)| ((*n).to_owned(), c as f64 / total))
            .collect(),
        lesion_free_slices: free,
        lesion_free_share: free as f64 / slices.len().max(1) as f64,
    }
}

/// The numbers of the report.
pub fn analyse(
    sources: &[EdaSource],
    manifest: Option<&SplitManifest>,
    config: &EdaConfig,
) -> Result<EdaReport> {
    config.validate()?;
    let mut groups = Vec::new();
    let mut lesions = Vec::new();
    for source in sources {
        let all: Vec<&EdaSlice> = source.slices.iter().collect();
        groups.push(group(&source.name, "all", &all));
        if manifest.is_some() {
            let mut parts: BTreeMap<&str, Vec<&EdaSlice>> = BTreeMap::new();
            for s in &all {
                parts
                    .entry(part_of(manifest, &s.id).expect("a manifest"))
                    .or_default()
                    .push(s);
            }
            for part in ["train", "val", "unused"] {
                if let Some(slices) = parts.get(part) {
                    groups.push(group(&source.name, part, slices));
                }
            }
        }
        for (class, labels) in LESIONS {
            let mut sizes: Vec<f64> = source
                .slices
                .par_iter()
                .flat_map_iter(|s| component_sizes(&s.labels, labels))
                .map(|n| n as f64)
                .collect();
            sizes.sort_by(f64::total_cmp);
            let pixels: Vec<f64> = PERCENTILES.iter().map(|&p| percentile(&sizes, p)).collect();
            lesions.push(LesionSizes {
                source: source.name.clone(),
                class: class.to_owned(),
                count: sizes.len(),
                mm2_percentiles: config
                    .pixel_spacing_mm
                    .map(|s| pixels.iter().map(|p| p * s * s).collect()),
                pixels_percentiles: pixels,
                sizes,
            });
        }
    }
    Ok(EdaReport {
        groups,
        lesions,
        pixel_spacing_mm: config.pixel_spacing_mm,
    })
}

/// A Kaggle pair (`(N,H,W,1)` HU images, `(N,H,W,4)` masks) as the source `name`; its slices
/// are `name/<index>`, as the split manifest names them.
pub fn load_kaggle(name: &str, images: &Path, masks: &Path) -> Result<EdaSource> {
    super::kaggle::check_pair(images, masks)?;
    let (images, masks) = (
        super::kaggle::read_images(images)?,
        super::kaggle::read_masks(masks)?,
    );
    let slices = (0..images.dim().0)
        .into_par_iter()
        .map(|i| EdaSlice {
            id: format!("{name}/{i}"),
            image: images
                .index_axis(ndarray::Axis(0), i)
                .index_axis(ndarray::Axis(2), 0)
                .to_owned(),
            labels: super::labels::from_masks(masks.index_axis(ndarray::Axis(0), i)),
        })
        .collect();
    Ok(EdaSource {
        name: name.to_owned(),
        unit: Unit::Hu,
        slices,
    })
}

/// An image folder (`images/<id>.png|jpg`, `masks/<id>.png`) as the source `folder`.
pub fn load_folder(root: &Path, map: &LabelMap) -> Result<EdaSource> {
    let slices = super::folder::list(root)?
        .par_iter()
        .map(|(id, path)| {
            let s = super::folder::read(root, id, path, map)?;
            Ok(EdaSlice {
                id: format!("folder/{id}"),
                image: s.image,
                labels: s.labels,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EdaSource {
        name: "folder".into(),
        unit: Unit::Grey,
        slices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::labels::LABEL_OTHER_LUNG;

    #[test]
    fn components_are_eight_connected() {
        let labels = ndarray::arr2(&[[1u8, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [1, 1, 0, 1]]);
        let mut ggo = component_sizes(&labels, &[1]);
        ggo.sort_unstable();
        assert_eq!(ggo, [1, 2, 2], "the diagonal pair is one lesion");
        assert_eq!(component_sizes(&labels, &[2]), [2]);
        assert_eq!(component_sizes(&labels, &[1, 2]).len(), 4);
    }

    fn source() -> EdaSource {
        let lesion = ndarray::Array2::from_shape_fn((8, 8), |(y, x)| {
            if y < 2 && x < 2 {
                LABEL_GGO
            } else if y > 5 {
                LABEL_OTHER_LUNG
            } else {
                0
            }
        });
        EdaSource {
            name: "medseg".into(),
            unit: Unit::Hu,
            slices: vec![
                EdaSlice {
                    id: "medseg/0".into(),
                    image: Array2::from_elem((8, 8), -700.0),
                    labels: lesion,
                },
                EdaSlice {
                    id: "medseg/1".into(),
                    image: Array2::from_elem((8, 8), -900.0),
                    labels: Array2::zeros((8, 8)),
                },
            ],
        }
    }

    #[test]
    fn groups_per_part_count_classes_and_lesion_free_slices() {
        let manifest = SplitManifest {
            seed: 0,
            sources: vec![],
            fold: 0,
            train: vec!["medseg/0".into()],
            val: vec!["medseg/1".into()],
            folds: vec![],
            original_sizes: BTreeMap::new(),
        };
        let config = EdaConfig {
            pixel_spacing_mm: Some(0.5),
            ..Default::default()
        };
        let report = analyse(&[source()], Some(&manifest), &config).unwrap();
        let parts: Vec<&str> = report.groups.iter().map(|g| g.part.as_str()).collect();
        assert_eq!(parts, ["all", "train", "val"]);
        let all = &report.groups[0];
        assert_eq!(all.slices, 2);
        assert_eq!(all.lesion_free_slices, 1);
        assert!((all.class_share["ggo"] - 4.0 / 128.0).abs() < 1e-12);
        assert_eq!(report.groups[2].lesion_free_share, 1.0);
        let ggo = &report.lesions[0];
        assert_eq!((ggo.class.as_str(), ggo.count), ("ggo", 1));
        assert_eq!(ggo.pixels_percentiles[2], 4.0);
        assert_eq!(ggo.mm2_percentiles.as_ref().unwrap()[2], 1.0);
        let dir = tempfile::tempdir().unwrap();
        write_report(&[source()], &report, &config, dir.path()).unwrap();
        for f in [
            "eda.html",
            "eda.json",
            "class_balance.png",
            "medseg_histograms.png",
            "medseg_lesion_sizes.png",
            "medseg_samples.png",
        ] {
            assert!(dir.path().join(f).metadata().unwrap().len() > 100, "{f}");
        }
    }
}
