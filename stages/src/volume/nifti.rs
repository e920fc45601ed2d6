//! NIfTI-1 volumes (`.nii`, `.nii.gz`, either byte order) in, `u8` label maps and `f32` maps out.
//!
//! The header is checked before any voxel is allocated: NIfTI-2 is refused, the dimensions must be
//! sane and the file must hold every voxel it declares (a gzip stream is inflated only as far as
//! the header says, so a gzip bomb costs nothing). Values are `scl_slope · v + scl_inter` where
//! `scl_slope ≠ 0`; the affine is the sform (`sform_code > 0`), else the qform, else the voxel
//! size alone, with a warning.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ndarray::{ArrayView3, Axis, Ix3};
use nifti::writer::WriterOptions;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType};

use super::{Affine, Source, Volume, guard};
use crate::{Error, Result};

/// The largest volume read: 2³⁰ voxels (4 GiB of `f32`), beyond any CT.
const MAX_VOXELS: u64 = 1 << 30;
const HEADER_BYTES: usize = 348;

/// Reads a `.nii` or `.nii.gz` file.
pub fn read(path: &Path) -> Result<Volume> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_bytes(path, &bytes, is_gzip(&bytes))
}

/// The dimensions of a `.nii[.gz]` file, from its header alone (the first 64 KiB of the file).
pub fn read_shape(path: &Path) -> Result<Vec<usize>> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    shape_of_bytes(path, &head)
}

/// The dimensions a `.nii[.gz]`'s bytes declare, from the header alone: what an upload is
/// checked against before its voxels are inflated.
pub fn shape_of_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<usize>> {
    let header = parse_header(path, bytes, is_gzip(bytes))?;
    check_dims(&header).map_err(|m| Error::invalid_data(path, m))
}

/// Whether bytes start as a gzip stream.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Inflates and checks the 348-byte header: NIfTI-1, single file.
fn parse_header(path: &Path, bytes: &[u8], gz: bool) -> Result<NiftiHeader> {
    let invalid = |m: String| Error::invalid_data(path, m);
    // The header first, from at most 348 inflated bytes.
    let mut header_bytes = Vec::with_capacity(HEADER_BYTES);
    inflate_into(path, bytes, gz, HEADER_BYTES as u64, &mut header_bytes)?;
    if header_bytes.len() < 4 {
        return Err(invalid("empty or not a NIfTI file: no header".into()));
    }
    let sizeof = i32::from_le_bytes(header_bytes[0..4].try_into().expect("4 bytes"));
    match (sizeof, sizeof.swap_bytes()) {
        (348, _) | (_, 348) => {}
        (540, _) | (_, 540) => {
            return Err(invalid(
                "a NIfTI-2 file (540-byte header); covseg reads NIfTI-1: convert it, e.g. with \
                 nibabel (`nib.Nifti1Image(img.dataobj, img.affine).to_filename(...)`)"
                    .into(),
            ));
        }
        _ => {
            return Err(invalid(format!(
                "not a NIfTI-1 file: the header starts with sizeof_hdr {sizeof}, expected 348{}",
                if gz {
                    ""
                } else {
                    " (a gzip file must be named .nii.gz)"
                }
            )));
        }
    }
    if header_bytes.len() < HEADER_BYTES {
        return Err(invalid(format!(
            "truncated header: {} of {HEADER_BYTES} bytes",
            header_bytes.len()
        )));
    }
    let header = NiftiHeader::from_reader(&header_bytes[..])
        .map_err(|e| invalid(format!("unreadable NIfTI-1 header: {e}")))?;
    if &header.magic != b"n+1\0" {
        return Err(invalid(format!(
            "magic {:?}: covseg reads single-file NIfTI-1 (`n+1`); a `.hdr`/`.img` pair (`ni1`) \
             must be merged into one `.nii` first",
            String::from_utf8_lossy(&header.magic)
        )));
    }
    Ok(header)
}

/// Reads a NIfTI-1 image from its bytes (gzip-compressed where `gz`); `path` names it in errors.
pub fn read_bytes(path: &Path, bytes: &[u8], gz: bool) -> Result<Volume> {
    let invalid = |m: String| Error::invalid_data(path, m);
    let header = parse_header(path, bytes, gz)?;
    let dims = check_dims(&header).map_err(invalid)?;
    let datatype = header
        .data_type()
        .map_err(|_| invalid(format!("unknown datatype code {}", header.datatype)))?;
    let elem = scalar_size(datatype).ok_or_else(|| {
        invalid(format!(
            "datatype {datatype:?}: covseg reads scalar volumes (integers or floats)"
        ))
    })?;
    if header.bitpix as usize != elem * 8 {
        return Err(invalid(format!(
            "bitpix {} disagrees with datatype {datatype:?} ({} bits)",
            header.bitpix,
            elem * 8
        )));
    }
    let offset = header.vox_offset;
    if !(352.0..1e9).contains(&offset) {
        return Err(invalid(format!(
            "vox_offset {offset}: expected at least 352 (the header and its extension flag)"
        )));
    }
    let voxels: u64 = dims.iter().map(|&d| d as u64).product();
    let need = offset as u64 + voxels * elem as u64;
    let mut data = Vec::new();
    inflate_into(path, bytes, gz, need, &mut data)?;
    if (data.len() as u64) < need {
        return Err(invalid(format!(
            "truncated: the header declares {} voxels of {elem} bytes from byte {offset}, \
             but the {}data ends at byte {}",
            voxels,
            if gz { "inflated " } else { "" },
            data.len()
        )));
    }
    let object = guard(path, "NIfTI", || {
        nifti::InMemNiftiObject::from_reader(&data[..])
            .map_err(|e| invalid(format!("unreadable NIfTI volume: {e}")))
    })?;
    drop(data);
    let header = object.header().clone();
    let array = guard(path, "NIfTI", || {
        object
            .into_volume()
            .into_ndarray::<f32>()
            .map_err(|e| invalid(format!("voxels not readable as numbers: {e}")))
    })?;
    let mut warnings = Vec::new();
    let array = match array.ndim() {
        3 => array,
        n => {
            let extra: usize = array.shape()[3..].iter().product();
            if extra > 1 {
                warnings.push(format!(
                    "a {n}-D file ({}); only its first 3-D volume is read",
                    shape_text(array.shape())
                ));
            }
            let mut a = array;
            while a.ndim() > 3 {
                a = a.index_axis_move(Axis(3), 0);
            }
            a
        }
    };
    let hu = array
        .into_dimensionality::<Ix3>()
        .map_err(|e| invalid(format!("not a 3-D volume: {e}")))?;
    let hu = if hu.is_standard_layout() {
        hu
    } else {
        hu.as_standard_layout().into_owned()
    };
    if hu.iter().any(|v| !v.is_finite()) {
        return Err(invalid(
            "the voxels hold NaN or infinite values (after scl_slope/scl_inter)".into(),
        ));
    }
    let affine = affine_of(&header, &mut warnings).map_err(invalid)?;
    Ok(Volume {
        hu,
        affine,
        name: stem(path),
        source: Source::Nifti {
            path: path.to_owned(),
            header: Box::new(header),
        },
        warnings,
    })
}

/// Writes a label map with the geometry of `like`: the very header of a NIfTI input (every
/// field but the data type, scaling and calibration), or one built from the affine of a DICOM
/// series. Gzip-compressed where the name ends in `.gz`. Synced to disk.
pub fn write_labels(path: &Path, labels: ArrayView3<u8>, like: &Volume) -> Result<()> {
    check_shape(path, labels.shape(), like)?;
    let header = header_for(like, "covseg labels");
    write(path, &header, |w| w.write_nifti(&labels))
}

/// Writes the HU of `volume` as int16 (rounded, clipped to the int16 range), with its geometry.
pub fn write_hu(path: &Path, volume: &Volume) -> Result<()> {
    let hu = volume
        .hu
        .mapv(|v| v.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16);
    let header = header_for(volume, "covseg CT (HU)");
    write(path, &header, |w| w.write_nifti(&hu))
}

/// Writes a float map (probabilities) with the geometry of `like`.
pub fn write_map(path: &Path, values: ArrayView3<f32>, like: &Volume) -> Result<()> {
    check_shape(path, values.shape(), like)?;
    let mut header = header_for(like, "covseg probability");
    header.cal_min = 0.0;
    header.cal_max = 1.0;
    write(path, &header, |w| w.write_nifti(&values))
}

fn write(
    path: &Path,
    header: &NiftiHeader,
    f: impl FnOnce(WriterOptions<'_>) -> nifti::Result<()>,
) -> Result<()> {
    let options = WriterOptions::new(path).reference_header(header);
    f(options).map_err(|e| match e {
        nifti::NiftiError::Io(io) => Error::io(path, io),
        other => Error::invalid_data(path, format!("cannot write NIfTI: {other}")),
    })?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn check_shape(path: &Path, shape: &[usize], like: &Volume) -> Result<()> {
    if shape != like.hu.shape() {
        return Err(Error::invalid_data(
            path,
            format!(
                "map of shape {} for a volume of shape {}",
                shape_text(shape),
                shape_text(like.hu.shape())
            ),
        ));
    }
    Ok(())
}

fn header_for(like: &Volume, description: &str) -> NiftiHeader {
    let mut header = match &like.source {
        Source::Nifti { header, .. } => (**header).clone(),
        Source::Dicom(_) | Source::Generated => header_from_affine(&like.affine),
    };
    header.cal_min = 0.0;
    header.cal_max = 0.0;
    header.intent_code = 0;
    header.intent_name = [0; 16];
    header.aux_file = [0; 24];
    header.descrip = description.as_bytes().to_vec();
    header
}

/// A header whose sform (and qform, where the grid is orthogonal) is `affine`, in mm.
fn header_from_affine(affine: &Affine) -> NiftiHeader {
    let mut h = NiftiHeader::default();
    let spacing = affine.spacing();
    h.pixdim = [
        1.0,
        spacing[0] as f32,
        spacing[1] as f32,
        spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    h.xyzt_units = 2; // mm
    h.sform_code = 1;
    let row = |r: usize| std::array::from_fn(|c| affine.0[r][c] as f32);
    h.srow_x = row(0);
    h.srow_y = row(1);
    h.srow_z = row(2);
    if let Some((bcd, qfac, offset)) = affine.quaternion() {
        h.qform_code = 1;
        h.pixdim[0] = qfac as f32;
        [h.quatern_b, h.quatern_c, h.quatern_d] = bcd.map(|v| v as f32);
        [h.quatern_x, h.quatern_y, h.quatern_z] = offset.map(|v| v as f32);
    } else {
        h.qform_code = 0;
    }
    h
}

fn affine_of(h: &NiftiHeader, warnings: &mut Vec<String>) -> std::result::Result<Affine, String> {
    let pixdim = [h.pixdim[1], h.pixdim[2], h.pixdim[3]].map(|v| (v as f64).abs());
    let affine = if h.sform_code > 0 {
        let r = |row: [f32; 4]| row.map(|v| v as f64);
        let [x, y, z] = [r(h.srow_x), r(h.srow_y), r(h.srow_z)];
        let a = Affine([x, y, z, [0.0, 0.0, 0.0, 1.0]]);
        if !a.is_valid() {
            return Err(format!(
                "sform (sform_code {}) is degenerate: srow_x {:?}, srow_y {:?}, srow_z {:?}",
                h.sform_code, h.srow_x, h.srow_y, h.srow_z
            ));
        }
        a
    } else if h.qform_code > 0 {
        let bcd = [h.quatern_b, h.quatern_c, h.quatern_d].map(|v| v as f64);
        let offset = [h.quatern_x, h.quatern_y, h.quatern_z].map(|v| v as f64);
        let a = Affine::from_quaternion(bcd, h.pixdim[0] as f64, pixdim, offset);
        if !a.is_valid() {
            return Err(format!(
                "qform (qform_code {}) is degenerate: quaternion {bcd:?}, pixdim {pixdim:?}",
                h.qform_code
            ));
        }
        a
    } else {
        warnings
            .push("neither sform nor qform is set: the voxel size alone places the volume".into());
        let spacing = pixdim.map(|v| if v > 0.0 && v.is_finite() { v } else { 1.0 });
        Affine::scaling(spacing)
    };
    Ok(affine)
}

fn check_dims(h: &NiftiHeader) -> std::result::Result<Vec<usize>, String> {
    let n = h.dim[0] as usize;
    if !(3..=7).contains(&n) {
        return Err(format!(
            "dim[0] = {n}: a CT volume has 3 dimensions (4 to 7 are read as their first 3-D volume)"
        ));
    }
    let dims: Vec<usize> = h.dim[1..=n].iter().map(|&d| d as usize).collect();
    if dims.contains(&0) || dims.iter().any(|&d| d > 32767) {
        return Err(format!("dimensions {dims:?}: every one must be 1 to 32767"));
    }
    let voxels: u64 = dims.iter().map(|&d| d as u64).product();
    if voxels > MAX_VOXELS {
        return Err(format!(
            "dimensions {dims:?} are {voxels} voxels, more than the {MAX_VOXELS} covseg reads"
        ));
    }
    Ok(dims)
}

fn scalar_size(t: NiftiType) -> Option<usize> {
    use NiftiType::*;
    Some(match t {
        Uint8 | Int8 => 1,
        Int16 | Uint16 => 2,
        Int32 | Uint32 | Float32 => 4,
        Int64 | Uint64 | Float64 => 8,
        _ => return None,
    })
}

/// Inflates (or copies) up to `limit` bytes of `bytes` into `out`.
fn inflate_into(path: &Path, bytes: &[u8], gz: bool, limit: u64, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    if gz {
        let decoder = flate2::read::MultiGzDecoder::new(bytes);
        decoder
            .take(limit)
            .read_to_end(out)
            .map_err(|e| Error::invalid_data(path, format!("damaged gzip data: {e}")))?;
    } else {
        let n = (limit as usize).min(bytes.len());
        out.extend_from_slice(&bytes[..n]);
    }
    Ok(())
}

fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    for ext in [".nii.gz", ".nii"] {
        if lower.ends_with(ext) {
            return name[..name.len() - ext.len()].to_owned();
        }
    }
    name
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}
