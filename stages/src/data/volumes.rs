//! Training data from CT volumes: image volumes (`.nii[.gz]`, HU) paired with label volumes of
//! the same name (nnU-Net's `_0000` channel suffix on an image name is allowed), mapped through
//! the label map, and cut into axial slices as the model sees them: rows down the image (j),
//! columns across it (i), as a DICOM viewer shows a slice.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Axis};

use super::folder::LabelMap;
use super::labels::LABEL_OTHER_LUNG;
use super::resize;
use super::spacing::{PAD_HU, SpacingPlan};
use crate::volume::{self, Volume};
use crate::{Error, Result};

/// An image volume and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePair {
    pub name: String,
    pub image: PathBuf,
    pub labels: PathBuf,
}

/// How far the label volume's voxel centres may lie from the image's, in mm.
const ALIGNMENT_MM: f64 = 1e-2;

fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let cut = if lower.ends_with(".nii.gz") {
        7
    } else if lower.ends_with(".nii") {
        4
    } else {
        0
    };
    name[..name.len() - cut].to_owned()
}

fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && volume::is_nifti(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Pairs every image volume in `images` (a folder of `.nii[.gz]`, or one file) with the label
/// volume of the same name in `labels`.
pub fn pairs(images: &Path, labels: &Path) -> Result<Vec<VolumePair>> {
    let image_files = nifti_files(images)?;
    if image_files.is_empty() {
        return Err(Error::invalid_data(
            images,
            "holds no .nii or .nii.gz volumes (DICOM series need converting to NIfTI for training, e.g. with dcm2niix)",
        ));
    }
    let label_files = nifti_files(labels)?;
    let mut out = Vec::with_capacity(image_files.len());
    for image in image_files {
        let name = stem(&image);
        let base = name.strip_suffix("_0000").unwrap_or(&name);
        let found = label_files
            .iter()
            .find(|l| stem(l) == name)
            .or_else(|| label_files.iter().find(|l| stem(l) == base))
            .ok_or_else(|| {
                Error::invalid_data(
                    &image,
                    format!(
                        "has no label volume: expected {} in {}",
                        format_args!("{base}.nii.gz"),
                        labels.display()
                    ),
                )
            })?;
        out.push(VolumePair {
            name: base.to_owned(),
            image,
            labels: found.clone(),
        });
    }
    if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::invalid_data(
            &w[1].image,
            format!(
                "names the volume {} twice (one image per volume)",
                w[0].name
            ),
        ));
    }
    Ok(out)
}

/// Reads a pair: the image in HU and its labels mapped to covseg's (0 background, 1 GGO,
/// 2 consolidation, 3 other lung), after checking the two share one grid.
pub fn read_pair(pair: &VolumePair, map: &LabelMap) -> Result<(Volume, Array3<u8>)> {
    let image = volume::nifti::read(&pair.image)?;
    let labels = volume::nifti::read(&pair.labels)?;
    if image.shape() != labels.shape() {
        return Err(Error::invalid_data(
            &pair.labels,
            format!(
                "has shape {:?} but its image {} has {:?}",
                labels.shape(),
                pair.image.display(),
                image.shape()
            ),
        ));
    }
    let [ni, nj, nk] = image.shape();
    let corners = [
        [0.0, 0.0, 0.0],
        [ni as f64 - 1.0, nj as f64 - 1.0, nk as f64 - 1.0],
        [ni as f64 - 1.0, 0.0, 0.0],
        [0.0, nj as f64 - 1.0, 0.0],
    ];
    for c in corners {
        let (a, b) = (image.affine.apply(c), labels.affine.apply(c));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        if d > ALIGNMENT_MM {
            return Err(Error::invalid_data(
                &pair.labels,
                format!(
                    "is not on its image's grid: voxel {c:?} lies {d:.3} mm from the image's (the affines differ); resample the labels onto the image"
                ),
            ));
        }
    }
    let table = map.table();
    let mut mapped = Array3::zeros((ni, nj, nk));
    for (out, &v) in mapped.iter_mut().zip(labels.hu.iter()) {
        let value = if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
            table.get(&(v as u8)).copied()
        } else {
            None
        };
        *out = value.ok_or_else(|| {
            Error::invalid_data(
                &pair.labels,
                format!(
                    "holds the value {v}, which params.label_map does not name ({}); e.g. label_map = {{ background = 0, ggo = 1, consolidation = 2, lung = 3 }}",
                    map.describe()
                ),
            )
        })?;
    }
    Ok((image, mapped))
}

/// The axial slices of a volume and its labels as model-size images: HU `(size, size)` and
/// labels, resampled to `pixel_mm` and centred when it is set, else resized to `size`.
pub fn slices(
    volume: &Volume,
    labels: &Array3<u8>,
    pixel_mm: Option<f64>,
    size: usize,
) -> Vec<(Array2<f32>, Array2<u8>)> {
    let [ni, nj, _] = volume.shape();
    let spacing = volume.spacing();
    volume
        .hu
        .axis_iter(Axis(2))
        .zip(labels.axis_iter(Axis(2)))
        .map(|(hu, l)| {
            let (hu, l) = (hu.t(), l.t());
            match pixel_mm {
                Some(mm) => {
                    let plan = SpacingPlan::new(nj, ni, [spacing[1], spacing[0]], mm, size);
                    (plan.to_model(hu, PAD_HU), plan.labels_to_model(l))
                }
                None => (
                    resize::bilinear(hu, size, size),
                    resize::nearest(l, size, size),
                ),
            }
        })
        .collect()
}

/// Whether any label is "other lung", so a volume set carries lung labels.
pub fn has_lung(labels: &Array3<u8>) -> bool {
    labels.iter().any(|&l| l == LABEL_OTHER_LUNG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Source};

    fn write(dir: &Path, name: &str, values: &Array3<f32>, affine: Affine) {
        let v = Volume {
            hu: values.clone(),
            affine,
            name: name.into(),
            source: Source::Generated,
            warnings: vec![],
        };
        volume::nifti::write_hu(&dir.join(name), &v).unwrap();
    }

    #[test]
    fn pairs_by_name_map_labels_and_refuse_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = (dir.path().join("imagesTr"), dir.path().join("labelsTr"));
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&labels).unwrap();
        let affine = Affine::scaling([0.8, 0.8, 5.0]);
        let hu = Array3::from_elem((8, 6, 3), -800.0f32);
        let lab = Array3::from_shape_fn((8, 6, 3), |(i, _, _)| (i % 3) as f32 * 4.0);
        write(&images, "case_0000.nii.gz", &hu, affine);
        write(&labels, "case.nii.gz", &lab, affine);
        let found = pairs(&images, &labels).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "case");
        let map = LabelMap {
            background: 0,
            ggo: 4,
            consolidation: 8,
            lung: None,
        };
        let (v, mapped) = read_pair(&found[0], &map).unwrap();
        assert_eq!(v.shape(), [8, 6, 3]);
        assert_eq!(mapped[(1, 0, 0)], 1);
        assert_eq!(mapped[(2, 0, 0)], 2);
        // A value the map does not name is an error naming the file and the value.
        let err = read_pair(&found[0], &LabelMap::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("case.nii.gz") && err.contains("value 4"),
            "{err}"
        );
        // Labels on another grid.
        write(
            &labels,
            "case.nii.gz",
            &lab,
            Affine::scaling([0.8, 0.8, 2.5]),
        );
        let err = read_pair(&found[0], &map).unwrap_err().to_string();
        assert!(err.contains("not on its image's grid"), "{err}");
        // An image without labels.
        write(&images, "other.nii.gz", &hu, affine);
        let err = pairs(&images, &labels).unwrap_err().to_string();
        assert!(
            err.contains("other.nii.gz") && err.contains("has no label volume"),
            "{err}"
        );
    }

    #[test]
    fn slices_are_rows_by_columns_at_the_model_spacing() {
        let affine = Affine::scaling([0.5, 0.5, 5.0]);
        let hu = Array3::from_shape_fn((40, 20, 2), |(i, j, _)| (i * 100 + j) as f32);
        let v = Volume {
            hu,
            affine,
            name: "v".into(),
            source: Source::Generated,
            warnings: vec![],
        };
        let labels = Array3::from_elem((40, 20, 2), 3u8);
        // 40 columns × 20 rows at 0.5 mm → 20×10 at 1 mm, centred on 32×32.
        let out = slices(&v, &labels, Some(1.0), 32);
        assert_eq!(out.len(), 2);
        let (image, lab) = &out[0];
        assert_eq!(image.dim(), (32, 32));
        assert_eq!(lab.iter().filter(|&&l| l == 3).count(), 10 * 20);
        assert_eq!(image[(0, 0)], PAD_HU);
        // Without a spacing: a plain resize, rows = j.
        let (image, _) = &slices(&v, &labels, None, 20)[0];
        assert_eq!(image.dim(), (20, 20));
        assert!(image[(0, 19)] > image[(19, 0)], "columns run along i");
    }
}
