//! DICOM series → volumes, with dicom-rs.
//!
//! A folder (searched recursively) or a set of in-memory files (a zipped upload) is read in two
//! passes: every file's header, without pixels, to sort the files into series and order their
//! slices ([`series`]); then the pixels of each series, through the modality LUT (Rescale
//! Slope/Intercept, per frame in enhanced files) to HU. MONOCHROME1 keeps its values: it inverts
//! the display, not the HU. Files that are not DICOM (no `DICM` at byte 128) or not images (a
//! SEG, a report) are skipped and counted; a damaged DICOM image is an error naming the file.

pub mod header;
pub mod series;
pub mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use ndarray::Array3;
use rayon::prelude::*;

use super::{Source, Volume, guard};
use crate::{Error, Result};
use header::{FileHeader, Skip};

/// Where a series came from, for outputs that reference it.
#[derive(Debug, Clone, Default)]
pub struct SeriesInfo {
    pub series_uid: String,
    pub study_uid: String,
    pub series_number: Option<i64>,
    pub modality: String,
    /// SOPInstanceUID of each slice, in volume order (k).
    pub sop_instances: Vec<String>,
    /// The file of each slice, in volume order.
    pub files: Vec<PathBuf>,
    /// The transfer syntaxes met, by name.
    pub transfer_syntaxes: Vec<String>,
}

/// One file of a series: on disk, or already in memory.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: PathBuf,
    pub bytes: Option<Vec<u8>>,
}

impl Part {
    fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match &self.bytes {
            Some(b) => Ok(Cow::Borrowed(b)),
            None => std::fs::read(&self.name)
                .map(Cow::Owned)
                .map_err(|e| Error::io(&self.name, e)),
        }
    }
}

/// Whether the bytes carry the DICOM file magic.
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

/// Reads one DICOM file (a single slice, or an enhanced multi-frame volume).
pub fn read_file(path: &Path) -> Result<Volume> {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "series".into());
    let part = Part {
        name: path.to_owned(),
        bytes: None,
    };
    let mut volumes = read_parts(path, &stem, vec![part])?;
    Ok(volumes.remove(0))
}

/// Reads every series under `dir`.
pub fn read_folder(dir: &Path) -> Result<Vec<Volume>> {
    let mut files = Vec::new();
    list_files(dir, &mut files, 0)?;
    let parts = files
        .into_iter()
        .map(|name| Part { name, bytes: None })
        .collect();
    let stem = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "series".into());
    read_parts(dir, &stem, parts)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Err(Error::invalid_data(dir, "folders nested more than 16 deep"));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            list_files(&path, out, depth + 1)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

struct Scanned {
    part: usize,
    header: FileHeader,
}

/// Reads the series among `parts`; `origin` and `stem` name them in messages and outputs.
pub fn read_parts(origin: &Path, stem: &str, parts: Vec<Part>) -> Result<Vec<Volume>> {
    enum Scan {
        Image(Box<FileHeader>),
        NotDicom,
        NotAnImage,
    }
    let scans: Vec<Scan> = parts
        .par_iter()
        .map(|part| {
            let bytes = part.bytes()?;
            if !is_dicom(&bytes) {
                return Ok(Scan::NotDicom);
            }
            let obj = parse(&part.name, &bytes, false)?;
            match FileHeader::read(&obj, obj.meta().transfer_syntax()) {
                Ok(h) => Ok(Scan::Image(Box::new(h))),
                Err(Skip::NotAnImage(_)) => Ok(Scan::NotAnImage),
                Err(Skip::Invalid(m)) => Err(Error::invalid_data(&part.name, m)),
            }
        })
        .collect::<Result<_>>()?;
    let (mut not_dicom, mut not_image) = (0, 0);
    let mut groups: BTreeMap<String, Vec<Scanned>> = BTreeMap::new();
    for (part, scan) in scans.into_iter().enumerate() {
        match scan {
            Scan::Image(header) => {
                groups
                    .entry(header.series_uid.clone())
                    .or_default()
                    .push(Scanned {
                        part,
                        header: *header,
                    })
            }
            Scan::NotDicom => not_dicom += 1,
            Scan::NotAnImage => not_image += 1,
        }
    }
    if groups.is_empty() {
        return Err(Error::invalid_data(
            origin,
            format!(
                "no DICOM images: {} file(s), {not_dicom} not DICOM (no `DICM` at byte 128), \
                 {not_image} DICOM objects that are not images",
                parts.len()
            ),
        ));
    }
    let mut skipped = Vec::new();
    if not_dicom > 0 {
        skipped.push(format!("{not_dicom} file(s) that are not DICOM skipped"));
    }
    if not_image > 0 {
        skipped.push(format!(
            "{not_image} DICOM object(s) that are not images skipped"
        ));
    }
    let mut groups: Vec<(String, Vec<Scanned>)> = groups.into_iter().collect();
    groups.sort_by_key(|(uid, g)| (g[0].header.series_number, uid.clone()));
    let names = series_names(origin, stem, &parts, &groups);
    groups
        .into_iter()
        .zip(names)
        .map(|((uid, scanned), name)| {
            let mut volume = read_series(origin, &name, &uid, &parts, scanned)?;
            volume.warnings.extend(skipped.iter().cloned());
            Ok(volume)
        })
        .collect()
}

/// One name per series: the stem alone for one series; for several, the folder each sits in
/// alone (below `origin`, `/` written `_`), as in `patients/p01/…`, else `<stem>_series<n>`.
fn series_names(
    origin: &Path,
    stem: &str,
    parts: &[Part],
    groups: &[(String, Vec<Scanned>)],
) -> Vec<String> {
    if groups.len() == 1 {
        return vec![stem.to_owned()];
    }
    let folder = |scanned: &[Scanned]| -> Option<String> {
        let parent = |s: &Scanned| parts[s.part].name.parent().map(Path::to_path_buf);
        let first = parent(scanned.first()?)?;
        if scanned.iter().any(|s| parent(s).as_ref() != Some(&first)) {
            return None;
        }
        let below = first.strip_prefix(origin).unwrap_or(&first);
        let name: Vec<String> = below
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        (!name.is_empty()).then(|| name.join("_"))
    };
    let folders: Option<Vec<String>> = groups.iter().map(|(_, g)| folder(g)).collect();
    match folders {
        Some(names)
            if names
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == names.len() =>
        {
            names
        }
        _ => (1..=groups.len())
            .map(|n| format!("{stem}_series{n}"))
            .collect(),
    }
}

fn read_series(
    origin: &Path,
    name: &str,
    uid: &str,
    parts: &[Part],
    scanned: Vec<Scanned>,
) -> Result<Volume> {
    for s in &scanned {
        check_decodable(&parts[s.part].name, &s.header)?;
    }
    let headers: Vec<FileHeader> = scanned.iter().map(|s| s.header.clone()).collect();
    let names: Vec<String> = scanned
        .iter()
        .map(|s| parts[s.part].name.display().to_string())
        .collect();
    let shown_uid = if uid.is_empty() {
        "(no SeriesInstanceUID)"
    } else {
        uid
    };
    let geometry = series::assemble(&headers, &names)
        .map_err(|m| Error::invalid_data(origin, format!("series {shown_uid}: {m}")))?;
    // Pixels, file by file, in HU.
    let frames: Vec<ndarray::Array3<f32>> = scanned
        .par_iter()
        .map(|s| decode(&parts[s.part], &s.header))
        .collect::<Result<_>>()?;
    let (cols, rows) = (geometry.columns as usize, geometry.rows as usize);
    let mut hu = Array3::<f32>::zeros((cols, rows, geometry.slices.len()));
    for (k, slice) in geometry.slices.iter().enumerate() {
        let frame = frames[slice.file].index_axis(ndarray::Axis(0), slice.frame as usize);
        // frame is [row, column]; the volume is [i = column, j = row, k].
        hu.index_axis_mut(ndarray::Axis(2), k).assign(&frame.t());
    }
    let mut syntaxes: Vec<String> = headers
        .iter()
        .map(|h| syntax_name(&h.transfer_syntax))
        .collect();
    syntaxes.sort();
    syntaxes.dedup();
    let first = &headers[0];
    let info = SeriesInfo {
        series_uid: uid.to_owned(),
        study_uid: first.study_uid.clone(),
        series_number: first.series_number,
        modality: first.modality.clone(),
        sop_instances: geometry
            .slices
            .iter()
            .map(|s| headers[s.file].sop_instance.clone())
            .collect(),
        files: geometry
            .slices
            .iter()
            .map(|s| parts[scanned[s.file].part].name.clone())
            .collect(),
        transfer_syntaxes: syntaxes,
    };
    let mut warnings = geometry.warnings;
    if !first.modality.is_empty() && first.modality != "CT" {
        warnings.push(format!(
            "modality {}: covseg's models are trained on CT in HU",
            first.modality
        ));
    }
    Ok(Volume {
        hu,
        affine: geometry.affine,
        name: name.to_owned(),
        source: Source::Dicom(info),
        warnings,
    })
}

fn check_decodable(path: &Path, h: &FileHeader) -> Result<()> {
    if h.modality_lut_sequence {
        return Err(Error::invalid_data(
            path,
            "a Modality LUT Sequence (0028,3000) maps its pixels to values; covseg applies only \
             Rescale Slope/Intercept and cannot read these as HU",
        ));
    }
    if h.samples_per_pixel != 1 || !h.photometric.starts_with("MONOCHROME") {
        return Err(Error::invalid_data(
            path,
            format!(
                "a colour image ({}, {} samples per pixel): CT slices are MONOCHROME1/2",
                h.photometric, h.samples_per_pixel
            ),
        ));
    }
    match TransferSyntaxRegistry.get(&h.transfer_syntax) {
        None => Err(Error::invalid_data(
            path,
            format!(
                "unknown transfer syntax {}; convert the file to an uncompressed syntax",
                h.transfer_syntax
            ),
        )),
        Some(ts) if !(ts.is_codec_free() || ts.can_decode_all()) => Err(Error::invalid_data(
            path,
            format!(
                "transfer syntax {} ({}) is not supported by this build (covseg decodes \
                 uncompressed, deflate, RLE, JPEG baseline/extended/lossless and JPEG 2000); \
                 convert it, e.g. `gdcmconv --raw in.dcm out.dcm` or `dcmdjpls`",
                ts.name(),
                ts.uid()
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn syntax_name(uid: &str) -> String {
    TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_owned())
        .unwrap_or_else(|| uid.to_owned())
}

fn parse(path: &Path, bytes: &[u8], pixels: bool) -> Result<DefaultDicomObject> {
    guard(path, "DICOM", || {
        let options = OpenFileOptions::new().read_preamble(ReadPreamble::Always);
        let options = if pixels {
            options
        } else {
            options.read_until(tags::PIXEL_DATA)
        };
        options
            .from_reader(bytes)
            .map_err(|e| Error::invalid_data(path, format!("damaged DICOM file: {e}")))
    })
}

/// The frames of one file in HU: `[frame, row, column]`.
fn decode(part: &Part, h: &FileHeader) -> Result<Array3<f32>> {
    let path = &part.name;
    let bytes = part.bytes()?;
    let obj = parse(path, &bytes, true)?;
    guard(path, "DICOM pixel", || {
        let damaged = |e: &dyn std::fmt::Display| {
            Error::invalid_data(
                path,
                format!(
                    "pixel data not decodable ({}): {e}",
                    syntax_name(&h.transfer_syntax)
                ),
            )
        };
        let pixels = obj.decode_pixel_data().map_err(|e| damaged(&e))?;
        let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::Default);
        let array = pixels
            .to_ndarray_with_options::<f32>(&options)
            .map_err(|e| damaged(&e))?;
        let shape = array.shape().to_vec();
        let want = [h.planes.len(), h.rows as usize, h.columns as usize, 1];
        if shape != want {
            return Err(Error::invalid_data(
                path,
                format!("decoded pixels have shape {shape:?}, the header promises {want:?}"),
            ));
        }
        let array = array.index_axis_move(ndarray::Axis(3), 0);
        if array.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid_data(
                path,
                "pixels are not finite after rescaling",
            ));
        }
        Ok(array)
    })
}
