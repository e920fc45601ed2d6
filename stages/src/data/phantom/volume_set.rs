//! A set of phantom volumes on disk, in the forms covseg reads: each volume as a NIfTI file and as
//! a DICOM series, its true labels as a NIfTI label map, and the truth of the volume report.

use std::path::{Path, PathBuf};

use ndarray::Zip;

use super::{VolumePhantomConfig, generate_volume};
use crate::volume::dicom::writer::{SeriesUids, write_series};
use crate::volume::lung::LungMask;
use crate::volume::report::{VolumeReport, measure};
use crate::volume::{Source, Volume, nifti};
use crate::{Error, Progress, Result};

/// What the report's lung-mask field says of a phantom's truth.
pub const TRUTH_LUNGS: &str = "phantom truth: the lungs the phantom was drawn with";

/// Where the set goes: each folder is created.
#[derive(Debug, Clone)]
pub struct VolumeSetPaths {
    /// `<name>.nii.gz`, int16 HU.
    pub nifti: PathBuf,
    /// `<name>.nii.gz`, uint8 labels: 0 background, 1 GGO, 2 consolidation, 3 other lung.
    pub labels: PathBuf,
    /// `<name>/IM0001.dcm`, …
    pub dicom: PathBuf,
}

/// Generates and writes `config.volumes` volumes from index `config.first`; returns the true
/// report of each.
pub fn write_volume_set(
    config: &VolumePhantomConfig,
    seed: u64,
    paths: &VolumeSetPaths,
    progress: &dyn Progress,
) -> Result<Vec<VolumeReport>> {
    config.validate()?;
    for dir in [&paths.nifti, &paths.labels, &paths.dicom] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    progress.start(config.volumes as u64, "volumes");
    let mut truth = Vec::with_capacity(config.volumes);
    for index in config.first..config.first + config.volumes {
        let phantom = generate_volume(config, seed, index)?;
        let volume = Volume {
            hu: phantom.hu,
            affine: phantom.affine,
            name: phantom.name.clone(),
            source: Source::Generated,
            warnings: Vec::new(),
        };
        let file = |dir: &Path| dir.join(format!("{}.nii.gz", phantom.name));
        nifti::write_hu(&file(&paths.nifti), &volume)?;
        nifti::write_labels(&file(&paths.labels), phantom.labels.view(), &volume)?;
        let uid_seed = seed.rotate_left(17) ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let ids = SeriesUids::from_seed(uid_seed, volume.shape()[2]);
        write_series(
            &paths.dicom.join(&phantom.name),
            &volume,
            &phantom.name,
            &ids,
        )?;
        truth.push(true_report(&volume, &phantom.labels));
        progress.advance(1);
    }
    Ok(truth)
}

/// The report of a phantom's true labels over its true lungs (patient right = image left).
pub fn true_report(volume: &Volume, labels: &ndarray::Array3<u8>) -> VolumeReport {
    let lung = labels.mapv(|l| l > 0);
    let half = volume.shape()[0] / 2;
    let mut right = lung.clone();
    Zip::indexed(&mut right).for_each(|(i, _, _), r| *r &= i < half);
    let mut report = measure(volume, labels, &LungMask { lung, right });
    report.lung_mask = TRUTH_LUNGS.into();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use crate::volume::report::assess;

    /// The DICOM series, the NIfTI file and the truth describe one volume; the heuristic lung
    /// mask given the true lesions finds the phantom's involvement.
    #[test]
    fn series_nifti_and_truth_agree_and_the_report_finds_the_involvement() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VolumeSetPaths {
            nifti: dir.path().join("nifti"),
            labels: dir.path().join("labels"),
            dicom: dir.path().join("dicom"),
        };
        let config = VolumePhantomConfig {
            volumes: 2,
            slices: 20,
            size: 96,
            ..VolumePhantomConfig::default()
        };
        let truth = write_volume_set(&config, 4, &paths, &NoProgress).unwrap();
        assert_eq!(truth.len(), 2);
        for t in &truth {
            let nifti = nifti::read(&paths.nifti.join(format!("{}.nii.gz", t.volume))).unwrap();
            let labels = nifti::read(&paths.labels.join(format!("{}.nii.gz", t.volume))).unwrap();
            let series = crate::volume::read(&paths.dicom.join(&t.volume)).unwrap();
            assert_eq!(series.len(), 1);
            let series = &series[0];
            assert_eq!(series.shape(), [96, 96, 20]);
            assert_eq!(nifti.shape(), series.shape());
            assert_eq!(labels.shape(), series.shape());
            // DICOM stores whole HU, as the int16 NIfTI does: the same voxels.
            let differ = series
                .hu
                .indexed_iter()
                .find(|&(at, &v)| v != nifti.hu[at])
                .map(|(at, &v)| (at, v, nifti.hu[at]));
            assert_eq!(differ, None, "(voxel, DICOM, NIfTI)");
            for v in [&nifti, &labels] {
                for (a, b) in v
                    .affine
                    .0
                    .iter()
                    .flatten()
                    .zip(series.affine.0.iter().flatten())
                {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{:?} vs {:?}",
                        v.affine,
                        series.affine
                    );
                }
            }
            assert_eq!(series.affine.orientation(), "LPS");

            let lesions = labels
                .hu
                .mapv(|l| if l == 1.0 || l == 2.0 { l as u8 } else { 0 });
            let (_, report, _) = assess(series, &lesions);
            let (want, got) = (
                t.involvement_percent.whole,
                report.involvement_percent.whole,
            );
            assert!(want > 1.0, "{} involvement {want} %", t.volume);
            assert!(
                (got - want).abs() <= 0.15 * want,
                "{}: involvement {got:.2} % by the heuristic lungs, {want:.2} % true",
                t.volume
            );
            let lung_error = (report.lung_ml.whole - t.lung_ml.whole).abs() / t.lung_ml.whole;
            assert!(lung_error < 0.15, "lung volume off by {lung_error:.3}");
            // The same voxels; the voxel size differs only in the DS digits DICOM keeps.
            let lesion_error = (report.lesion_ml.total - t.lesion_ml.total).abs();
            assert!(
                lesion_error < 1e-6 * t.lesion_ml.total,
                "lesion mL off by {lesion_error}"
            );
            for (side, want, got) in [
                (
                    "left",
                    t.involvement_percent.left,
                    report.involvement_percent.left,
                ),
                (
                    "right",
                    t.involvement_percent.right,
                    report.involvement_percent.right,
                ),
            ] {
                assert!(
                    (got - want).abs() <= 0.2 * want.max(1.0),
                    "{side}: {got:.2} % vs {want:.2} %"
                );
            }
        }
    }

    /// `first` picks other patients of the same seed: the set from 2 holds volume 2 of the set
    /// from 0, and a different one from volume 0.
    #[test]
    fn first_starts_the_set_at_another_patient() {
        let dir = tempfile::tempdir().unwrap();
        let paths = |name: &str| VolumeSetPaths {
            nifti: dir.path().join(name).join("nifti"),
            labels: dir.path().join(name).join("labels"),
            dicom: dir.path().join(name).join("dicom"),
        };
        let config = VolumePhantomConfig {
            volumes: 3,
            slices: 4,
            size: 64,
            ..VolumePhantomConfig::default()
        };
        let all = write_volume_set(&config, 5, &paths("all"), &NoProgress).unwrap();
        let later = VolumePhantomConfig {
            volumes: 1,
            first: 2,
            ..config
        };
        let one = write_volume_set(&later, 5, &paths("one"), &NoProgress).unwrap();
        assert_eq!(one[0].volume, "phantom-002");
        assert_eq!(one[0], all[2]);
        let bytes = |set: &str, name: &str| {
            std::fs::read(paths(set).nifti.join(format!("{name}.nii.gz"))).unwrap()
        };
        assert_eq!(bytes("one", "phantom-002"), bytes("all", "phantom-002"));
        assert_ne!(bytes("all", "phantom-000"), bytes("all", "phantom-002"));
        assert!(later.validate().is_ok());
        let too_far = VolumePhantomConfig {
            first: 5_000_000,
            ..config
        };
        assert!(
            too_far
                .validate()
                .unwrap_err()
                .to_string()
                .contains("first")
        );
    }
}
