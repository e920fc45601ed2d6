//! The Kaggle "COVID-19 CT Images Segmentation" files: `(N,H,W,1)` float HU images and `(N,H,W,4)`
//! boolean masks (0 GGO, 1 consolidation, 2 other lung, 3 background). Read with validation, written
//! in the same format by the phantom generator.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use ndarray::{Array4, Axis};
use ndarray_npy::ReadNpyExt;

use crate::{Error, Result};

/// Mask channels of the Kaggle files.
pub const GGO: usize = 0;
pub const CONSOLIDATION: usize = 1;
pub const OTHER_LUNG: usize = 2;
pub const BACKGROUND: usize = 3;
pub const MASK_CHANNELS: usize = 4;

/// What a `.npy` header says, read without loading the array so errors can name the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

impl NpyHeader {
    pub fn read(path: &Path) -> Result<Self> {
        let mut file = BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?);
        let bad = |message: &str| Error::Npy {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)
            .map_err(|_| bad("not a .npy file (too short)"))?;
        if &magic[..6] != b"\x93NUMPY" {
            return Err(bad("not a .npy file (bad magic bytes)"));
        }
        let len = if magic[6] == 1 {
            let mut b = [0u8; 2];
            file.read_exact(&mut b)
                .map_err(|_| bad("truncated header"))?;
            usize::from(u16::from_le_bytes(b))
        } else {
            let mut b = [0u8; 4];
            file.read_exact(&mut b)
                .map_err(|_| bad("truncated header"))?;
            u32::from_le_bytes(b) as usize
        };
        if len > 1 << 20 {
            return Err(bad("header longer than 1 MiB"));
        }
        let mut text = vec![0u8; len];
        file.read_exact(&mut text)
            .map_err(|_| bad("truncated header"))?;
        let text = String::from_utf8_lossy(&text);
        let field = |name: &str| -> Option<&str> {
            let start = text.find(&format!("'{name}'"))? + name.len() + 2;
            let rest = text[start..].trim_start().strip_prefix(':')?.trim_start();
            Some(rest)
        };
        let descr = field("descr")
            .and_then(|r| r.strip_prefix('\''))
            .and_then(|r| r.split('\'').next())
            .ok_or_else(|| bad("header has no 'descr'"))?
            .to_owned();
        let fortran_order = field("fortran_order").is_some_and(|r| r.starts_with("True"));
        let shape_text = field("shape")
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.split(')').next())
            .ok_or_else(|| bad("header has no 'shape'"))?;
        let shape = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("header 'shape' is not a tuple of integers"))?;
        Ok(Self {
            descr,
            fortran_order,
            shape,
        })
    }

    fn shape_text(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(ToString::to_string).collect();
        format!("({})", dims.join(","))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads CT images `(N,H,W,1)` as float32 HU. float64 (the Kaggle files) and float32 are accepted.
pub fn read_images(path: &Path) -> Result<Array4<f32>> {
    let header = NpyHeader::read(path)?;
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
    let reader = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| Error::io(path, e))
    };
    let npy_err = |e: ndarray_npy::ReadNpyError| Error::Npy {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let images = match header.descr.as_str() {
        "<f8" => Array4::<f64>::read_npy(reader()?)
            .map_err(npy_err)?
            .mapv(|v| v as f32),
        "<f4" => Array4::<f32>::read_npy(reader()?).map_err(npy_err)?,
        other => {
            return Err(Error::invalid_data(
                path,
                format!("images have dtype '{other}', expected float64 ('<f8') or float32 ('<f4')"),
            ));
        }
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
    let header = NpyHeader::read(path)?;
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
    let reader = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| Error::io(path, e))
    };
    let npy_err = |e: ndarray_npy::ReadNpyError| Error::Npy {
        path: path.to_owned(),
        message: e.to_string(),
    };
    match header.descr.as_str() {
        "|b1" => Array4::<bool>::read_npy(reader()?).map_err(npy_err),
        "|u1" => {
            let raw = Array4::<u8>::read_npy(reader()?).map_err(npy_err)?;
            if let Some(v) = raw.iter().find(|&&v| v > 1) {
                return Err(Error::invalid_data(
                    path,
                    format!("uint8 masks must hold 0 or 1, found {v}"),
                ));
            }
            Ok(raw.mapv(|v| v == 1))
        }
        other => Err(Error::invalid_data(
            path,
            format!("masks have dtype '{other}', expected bool ('|b1') or uint8 ('|u1')"),
        )),
    }
}

/// Checks that an image file and its mask file describe the same slices, before loading either.
pub fn check_pair(images: &Path, masks: &Path) -> Result<()> {
    let (i, m) = (NpyHeader::read(images)?, NpyHeader::read(masks)?);
    if i.shape.len() == 4 && m.shape.len() == 4 {
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

/// Number of slices in a Kaggle array file, from its header.
pub fn slice_count(path: &Path) -> Result<usize> {
    let header = NpyHeader::read(path)?;
    header
        .shape
        .first()
        .copied()
        .ok_or_else(|| Error::invalid_data(path, "array has no slice axis (a scalar .npy)"))
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
        assert_eq!(NpyHeader::read(&ip).unwrap().shape, vec![2, 8, 8, 1]);
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
