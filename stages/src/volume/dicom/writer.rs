//! A volume written as a DICOM CT series: one file per slice, explicit VR little endian, stored
//! as a scanner does (unsigned 16-bit values with Rescale Intercept −1024), with the geometry of
//! the volume's affine in patient coordinates (LPS). The phantom data uses it, so the readers are
//! tested end to end on a series whose every voxel and position is known.

use std::path::{Path, PathBuf};

use dicom_core::value::{C, PrimitiveValue};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::volume::Volume;
use crate::volume::affine::norm;
use crate::{Error, Result};

/// The stored value 0 is this HU.
const INTERCEPT: f32 = -1024.0;

/// Identifiers of a written series, derived from a seed so a rerun writes the same bytes.
#[derive(Debug, Clone)]
pub struct SeriesUids {
    pub study: String,
    pub series: String,
    pub frame_of_reference: String,
    /// SOP Instance UID of each slice, in volume order.
    pub instances: Vec<String>,
}

impl SeriesUids {
    /// UIDs under the `2.25` root (a UUID as a decimal integer), drawn from `seed`.
    pub fn from_seed(seed: u64, slices: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uid = || format!("2.25.{}", rng.random::<u128>() >> 2);
        Self {
            study: uid(),
            series: uid(),
            frame_of_reference: uid(),
            instances: (0..slices).map(|_| uid()).collect(),
        }
    }
}

/// Writes `volume` as `dir/IM0001.dcm`, … (slice k + 1), creating `dir`. `patient` names the
/// patient (PatientName and PatientID). Returns the files in slice order.
pub fn write_series(
    dir: &Path,
    volume: &Volume,
    patient: &str,
    ids: &SeriesUids,
) -> Result<Vec<PathBuf>> {
    let [ni, nj, nk] = volume.shape();
    if ids.instances.len() != nk {
        return Err(Error::invalid_data(
            dir,
            format!("{} instance UIDs for {nk} slices", ids.instances.len()),
        ));
    }
    if ni > usize::from(u16::MAX) || nj > usize::from(u16::MAX) {
        return Err(Error::invalid_data(dir, "slices over 65535 pixels a side"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // RAS+ → LPS: x and y change sign.
    let lps = |v: [f64; 3]| [-v[0], -v[1], v[2]];
    let a = &volume.affine;
    let (row, col) = (lps(a.column(0)), lps(a.column(1)));
    let (di, dj, dk) = (norm(row), norm(col), norm(a.column(2)));
    let unit = |v: [f64; 3], n: f64| v.map(|x| x / n);
    let orientation: Vec<f64> = unit(row, di).into_iter().chain(unit(col, dj)).collect();
    let mut files = Vec::with_capacity(nk);
    for k in 0..nk {
        let position = lps(a.apply([0.0, 0.0, k as f64]));
        let mut pixels = Vec::with_capacity(ni * nj * 2);
        for j in 0..nj {
            for i in 0..ni {
                // Rounded in HU, as the int16 NIfTI writer rounds, so the two agree.
                let stored = (volume.hu[(i, j, k)].round() - INTERCEPT)
                    .clamp(0.0, f32::from(u16::MAX)) as u16;
                pixels.extend_from_slice(&stored.to_le_bytes());
            }
        }
        let obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, ids.instances[k].as_str()),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, ids.study.as_str()),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, ids.series.as_str()),
            DataElement::new(
                tags::FRAME_OF_REFERENCE_UID,
                VR::UI,
                ids.frame_of_reference.as_str(),
            ),
            DataElement::new(tags::MODALITY, VR::CS, "CT"),
            DataElement::new(tags::PATIENT_NAME, VR::PN, patient),
            DataElement::new(tags::PATIENT_ID, VR::LO, patient),
            DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, "covseg phantom"),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, "1"),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, (k + 1).to_string()),
            DataElement::new(
                tags::IMAGE_TYPE,
                VR::CS,
                strs(&["DERIVED", "SECONDARY", "AXIAL"]),
            ),
            DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, decimals(&position)),
            DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                decimals(&orientation),
            ),
            // Row spacing (between rows, along j) first, then column spacing.
            DataElement::new(tags::PIXEL_SPACING, VR::DS, decimals(&[dj, di])),
            DataElement::new(tags::SLICE_THICKNESS, VR::DS, decimals(&[dk])),
            DataElement::new(tags::SPACING_BETWEEN_SLICES, VR::DS, decimals(&[dk])),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(nj as u16)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(ni as u16)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            DataElement::new(
                tags::RESCALE_INTERCEPT,
                VR::DS,
                decimals(&[INTERCEPT.into()]),
            ),
            DataElement::new(tags::RESCALE_SLOPE, VR::DS, "1"),
            DataElement::new(tags::RESCALE_TYPE, VR::LO, "HU"),
            DataElement::new(tags::WINDOW_CENTER, VR::DS, "-600"),
            DataElement::new(tags::WINDOW_WIDTH, VR::DS, "1500"),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)),
        ]);
        let path = dir.join(format!("IM{:04}.dcm", k + 1));
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .map_err(|e| Error::invalid_data(&path, format!("cannot build the DICOM file: {e}")))?;
        file.write_to_file(&path)
            .map_err(|e| Error::invalid_data(&path, format!("cannot write DICOM: {e}")))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        files.push(path);
    }
    Ok(files)
}

fn strs(values: &[&str]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect::<C<String>>())
}

/// Decimal strings (DS) of at most 16 characters, as the standard allows.
fn decimals(values: &[f64]) -> PrimitiveValue {
    let text = |v: f64| {
        for digits in (0..=10).rev() {
            let s = format!("{v:.digits$}");
            let s = if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            };
            if s.len() <= 16 {
                return if s == "-0" { "0".into() } else { s };
            }
        }
        format!("{v:.0}")
    };
    PrimitiveValue::Strs(values.iter().map(|&v| text(v)).collect::<C<String>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Source};
    use ndarray::Array3;

    #[test]
    fn a_written_series_reads_back_voxel_for_voxel_with_its_affine() {
        let (ni, nj, nk) = (12, 10, 5);
        let hu = Array3::from_shape_fn((ni, nj, nk), |(i, j, k)| {
            -1000.0 + (i * 37 + j * 11 + k * 101) as f32 % 2000.0
        });
        let affine = Affine::from_columns(
            [-0.7, 0.0, 0.0],
            [0.0, -0.8, 0.0],
            [0.0, 0.0, 2.5],
            [100.25, 80.0, -40.0],
        );
        let volume = Volume {
            hu: hu.clone(),
            affine,
            name: "t".into(),
            source: Source::Generated,
            warnings: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        let ids = SeriesUids::from_seed(7, nk);
        let files = write_series(dir.path(), &volume, "Phantom", &ids).unwrap();
        assert_eq!(files.len(), nk);
        let back = crate::volume::read(dir.path()).unwrap();
        assert_eq!(back.len(), 1);
        let back = &back[0];
        assert_eq!(back.hu, hu);
        for (a, b) in back
            .affine
            .0
            .iter()
            .flatten()
            .zip(affine.0.iter().flatten())
        {
            assert!((a - b).abs() < 1e-9, "{:?} vs {:?}", back.affine, affine);
        }
        let Source::Dicom(info) = &back.source else {
            panic!("not DICOM")
        };
        assert_eq!(info.series_uid, ids.series);
        assert_eq!(info.sop_instances, ids.instances);
        assert!(ids.series.len() <= 64 && ids.series.starts_with("2.25."));
        assert_eq!(SeriesUids::from_seed(7, nk).series, ids.series);
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        let PrimitiveValue::Strs(v) = decimals(&[-0.0, 1.5, -123.456_789_012_345, 1e-12]) else {
            panic!()
        };
        assert_eq!(v.as_slice(), ["0", "1.5", "-123.4567890123", "0"]);
        assert!(v.iter().all(|s| s.len() <= 16));
    }
}
