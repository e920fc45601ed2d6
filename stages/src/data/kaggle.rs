//! The Kaggle "COVID-19 CT Images Segmentation" files: `(N,H,W,1)` float HU images and `(N,H,W,4)`
//! boolean masks (0 GGO, 1 consolidation, 2 other lung, 3 background). Read with validation, written
//! in the same format by the phantom generator.

use std::path::Path;

use ndarray::{Array4, Axis};

use super::npy::{self, Header};
use crate::{Error, Result};

/// Mask channels of the Kaggle files.
pub const GGO: usize = 0;
pub const CONSOLIDATION: usize = 1;
pub const OTHER_LUNG: usize = 2;
pub const BACKGROUND: usize = 3;
pub const MASK_CHANNELS: usize = 4;

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The header of an image file, checked: `(N,H,W,1)` of float64 or float32.
pub fn image_header(path: &Path) -> Result<Header> {
    let header = Header::read(path)?;
    let shape = &header.shape;
    if shape.len() != 4 || shape[3] != 1 || shape[1] == 0 || shape[2] == 0 {
        return Err(Error::invalid_data(
            path,
            format!(
                "images have shape {}, expected (slices, height, width, 1)",
                header.shape_text()
            ),
        ));
    }
    if !matches!(header.descr.as_str(), "<f8" | "<f4") {
        return Err(Error::invalid_data(
            path,
            format!(
                "images have dtype '{}', expected float64 ('<f8') or float32 ('<f4')",
                header.descr
            ),
        ));
    }
    Ok(header)
}

/// The header of a mask file, checked: `(N,H,W,4)` of bool or uint8.
pub fn mask_header(path: &Path) -> Result<Header> {
    let header = Header::read(path)?;
    let shape = &header.shape;
    if shape.len() != 4 || shape[3] != MASK_CHANNELS {
        return Err(Error::invalid_data(
            path,
            format!(
                "masks have shape {}, expected (slices, height, width, 4) with channels GGO, consolidation, other lung, background",
                header.shape_text()
            ),
        ));
    }
    if !matches!(header.descr.as_str(), "|b1" | "|u1") {
        return Err(Error::invalid_data(
            path,
            format!(
                "masks have dtype '{}', expected bool ('|b1') or uint8 ('|u1')",
                header.descr
            ),
        ));
    }
    Ok(header)
}

/// Reads CT images `(N,H,W,1)` as float32 HU. float64 (the Kaggle files) and float32 are accepted.
pub fn read_images(path: &Path) -> Result<Array4<f32>> {
    let header = image_header(path)?;
    let images = if header.descr == "<f8" {
        npy::read_checked::<f64, _>(path, &header)?.mapv(|v| v as f32)
    } else {
        npy::read_checked::<f32, _>(path, &header)?
    };
    if let Some((index, _)) = images
        .outer_iter()
        .enumerate()
        .find(|(_, s)| s.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::invalid_data(
            path,
            format!("slice {index} holds NaN or infinite values"),
        ));
    }
    Ok(images)
}

/// Reads masks `(N,H,W,4)`; bool (the Kaggle files) and uint8 holding 0/1 are accepted.
pub fn read_masks(path: &Path) -> Result<Array4<bool>> {
    let header = mask_header(path)?;
    if header.descr == "|b1" {
        return npy::read_checked(path, &header);
    }
    let raw: Array4<u8> = npy::read_checked(path, &header)?;
    if let Some(v) = raw.iter().find(|&&v| v > 1) {
        return Err(Error::invalid_data(
            path,
            format!("uint8 masks must hold 0 or 1, found {v}"),
        ));
    }
    Ok(raw.mapv(|v| v == 1))
}

/// Checks that an image file and its mask file describe the same slices, before loading either.
pub fn check_pair(images: &Path, masks: &Path) -> Result<()> {
    let (i, m) = (image_header(images)?, mask_header(masks)?);
    {
        if i.shape[0] != m.shape[0] {
            return Err(Error::invalid_data(
                masks,
                format!(
                    "{} has {} slices but {} has {}",
                    file_name(masks),
                    m.shape[0],
                    file_name(images),
                    i.shape[0]
                ),
            ));
        }
        if i.shape[1..3] != m.shape[1..3] {
            return Err(Error::invalid_data(
                masks,
                format!(
                    "{} slices are {}×{} but {} slices are {}×{}",
                    file_name(masks),
                    m.shape[1],
                    m.shape[2],
                    file_name(images),
                    i.shape[1],
                    i.shape[2]
                ),
            ));
        }
    }
    Ok(())
}

/// Number of slices in a Kaggle image file, from its (checked) header.
pub fn slice_count(path: &Path) -> Result<usize> {
    Ok(image_header(path)?.shape[0])
}

/// Writes CT images `(N,H,W,1)` as float64 like the Kaggle files.
pub fn write_images(path: &Path, images: &Array4<f64>) -> Result<()> {
    super::npy::write(path, images)
}

/// Writes masks `(N,H,W,4)` as bool like the Kaggle files.
pub fn write_masks(path: &Path, masks: &Array4<bool>) -> Result<()> {
    super::npy::write(path, masks)
}

/// Fraction of pixels per mask channel, for statistics and tests.
pub fn channel_fractions(masks: &Array4<bool>) -> [f64; MASK_CHANNELS] {
    let total = (masks.len() / MASK_CHANNELS).max(1) as f64;
    let mut out = [0.0; MASK_CHANNELS];
    for (c, lane) in masks.axis_iter(Axis(3)).enumerate() {
        out[c] = lane.iter().filter(|&&v| v).count() as f64 / total;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;
    use ndarray_npy::WriteNpyExt;
    use std::fs::File;

    #[test]
    fn round_trip_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let images = Array4::from_shape_fn((2, 8, 8, 1), |(n, y, x, _)| {
            (n * 100 + y * 8 + x) as f64 - 900.0
        });
        let masks = Array4::from_shape_fn((2, 8, 8, 4), |(_, y, x, c)| (y + x) % 4 == c);
        let (ip, mp) = (dir.path().join("images.npy"), dir.path().join("masks.npy"));
        write_images(&ip, &images).unwrap();
        write_masks(&mp, &masks).unwrap();
        assert_eq!(Header::read(&ip).unwrap().shape, vec![2, 8, 8, 1]);
        assert_eq!(read_images(&ip).unwrap(), images.mapv(|v| v as f32));
        assert_eq!(read_masks(&mp).unwrap(), masks);
        check_pair(&ip, &mp).unwrap();
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (ip, mp) = (
            dir.path().join("images_medseg.npy"),
            dir.path().join("masks_medseg.npy"),
        );
        write_images(&ip, &Array4::zeros((3, 4, 4, 1))).unwrap();
        write_masks(&mp, &Array4::from_elem((2, 4, 4, 4), false)).unwrap();
        let err = check_pair(&ip, &mp).unwrap_err().to_string();
        assert!(
            err.ends_with("masks_medseg.npy has 2 slices but images_medseg.npy has 3"),
            "{err}"
        );
    }

    #[test]
    fn rejects_nan_wrong_shape_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let mut images = Array4::<f64>::zeros((2, 4, 4, 1));
        images[[1, 2, 2, 0]] = f64::NAN;
        write_images(&p, &images).unwrap();
        assert!(
            read_images(&p)
                .unwrap_err()
                .to_string()
                .contains("slice 1 holds NaN")
        );
        write_images(&p, &Array4::zeros((2, 4, 4, 3))).unwrap();
        assert!(
            read_images(&p)
                .unwrap_err()
                .to_string()
                .contains("expected (slices, height, width, 1)")
        );
        let as_u8 = Array4::<u8>::from_elem((1, 2, 2, 4), 2);
        as_u8.write_npy(File::create(&p).unwrap()).unwrap();
        assert!(
            read_masks(&p)
                .unwrap_err()
                .to_string()
                .contains("must hold 0 or 1, found 2")
        );
        assert!(
            read_images(&p)
                .unwrap_err()
                .to_string()
                .contains("expected (slices, height, width, 1)")
        );
        std::fs::write(&p, b"hello").unwrap();
        assert!(
            read_images(&p)
                .unwrap_err()
                .to_string()
                .contains("not a .npy file")
        );
    }
}
