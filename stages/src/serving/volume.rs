//! Uploaded CT volumes: one NIfTI-1 file (`.nii`, gzip-compressed or not) or a zip of one DICOM
//! series, read by the same readers as `predict`, and the answer: the label NIfTI, the report
//! JSON and its HTML page.
//!
//! Everything is bounded before it is allocated: a NIfTI's dimensions come from its header, a
//! zip's entries are counted and each is inflated no further than the limit allows (a declared
//! size is not trusted), and a volume's slices and voxels are checked before the model sees it.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use ndarray::Array3;

use super::RequestError;
use super::segment::Recipe;
use crate::predict::{VolumeLesions, VolumeSlices};
use crate::volume::dicom::{self, Part};
use crate::volume::report::VolumeReport;
use crate::volume::{Volume, nifti};

/// What an uploaded volume may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeLimits {
    /// Largest width and height of a slice.
    pub max_side: usize,
    /// Most slices in a volume.
    pub max_slices: usize,
    /// Most files in a zip.
    pub max_files: usize,
    /// Most bytes a zip may inflate to, all its files together.
    pub max_unpacked: u64,
}

impl Default for VolumeLimits {
    fn default() -> Self {
        Self {
            max_side: 1024,
            max_slices: 1000,
            max_files: 2000,
            max_unpacked: 1 << 30,
        }
    }
}

/// How a volume is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    /// `.nii` or `.nii.gz`.
    Nifti,
    /// A zip of a DICOM series' files (in folders or not).
    DicomZip,
}

impl VolumeFormat {
    /// The format a `Content-Type` names, if it names a volume.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/gzip"
            | "application/x-gzip"
            | "application/x-nifti"
            | "application/nifti" => Some(Self::Nifti),
            "application/zip" | "application/x-zip-compressed" | "application/dicom+zip" => {
                Some(Self::DicomZip)
            }
            _ => None,
        }
    }

    /// The format the first bytes show: gzip or the `n+1` magic, or a zip's local header.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if nifti::is_gzip(bytes) || bytes.get(344..348) == Some(b"n+1\0") {
            Some(Self::Nifti)
        } else if bytes.starts_with(b"PK\x03\x04") {
            Some(Self::DicomZip)
        } else {
            None
        }
    }
}

/// A name for the answer's files from a request's `?name=`: letters, digits, `-`, `_` and `.`
/// kept, anything else `_`, at most 64 characters; `volume` when nothing is left.
pub fn safe_name(given: Option<&str>) -> String {
    let name: String = given
        .unwrap_or("")
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.').to_owned();
    if name.is_empty() {
        "volume".into()
    } else {
        name
    }
}

/// Reads an uploaded volume; `name` becomes the volume's name.
pub fn decode(
    bytes: &[u8],
    format: Option<VolumeFormat>,
    name: &str,
    limits: &VolumeLimits,
) -> Result<Volume, RequestError> {
    let format = super::resolve_format(
        format,
        VolumeFormat::sniff(bytes),
        describe,
        "the body is not a NIfTI volume or a zipped DICOM series; send application/gzip \
         (.nii.gz), application/x-nifti (.nii) or application/zip",
    )?;
    let invalid = |e: crate::Error| RequestError::Invalid(e.to_string());
    let mut volume = match format {
        VolumeFormat::Nifti => {
            let path = Path::new(if nifti::is_gzip(bytes) {
                "upload.nii.gz"
            } else {
                "upload.nii"
            });
            let shape = nifti::shape_of_bytes(path, bytes).map_err(invalid)?;
            check_shape(&shape, limits)?;
            nifti::read_bytes(path, bytes, nifti::is_gzip(bytes)).map_err(invalid)?
        }
        VolumeFormat::DicomZip => {
            let parts = unzip(bytes, limits)?;
            let mut series =
                dicom::read_parts(Path::new("upload.zip"), name, parts).map_err(invalid)?;
            if series.len() > 1 {
                let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
                return Err(RequestError::Invalid(format!(
                    "the zip holds {} series ({}); send one series per request",
                    series.len(),
                    names.join(", ")
                )));
            }
            series.remove(0)
        }
    };
    check_shape(volume.hu.shape(), limits)?;
    volume.name = name.to_owned();
    Ok(volume)
}

fn describe(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Nifti => "a NIfTI volume",
        VolumeFormat::DicomZip => "a zip",
    }
}

fn check_shape(shape: &[usize], limits: &VolumeLimits) -> Result<(), RequestError> {
    let (i, j) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let k = shape.get(2).copied().unwrap_or(1);
    if i > limits.max_side || j > limits.max_side {
        return Err(RequestError::Invalid(format!(
            "the slices are {i}×{j} voxels; the largest accepted is {0}×{0}",
            limits.max_side
        )));
    }
    if k > limits.max_slices {
        return Err(RequestError::Invalid(format!(
            "the volume has {k} slices; the most accepted is {} (the server's --max-volume-slices)",
            limits.max_slices
        )));
    }
    Ok(())
}

/// The files of a zip, each inflated at most as far as the limits allow.
fn unzip(bytes: &[u8], limits: &VolumeLimits) -> Result<Vec<Part>, RequestError> {
    let bad = |m: String| RequestError::Invalid(format!("upload.zip: {m}"));
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable zip: {e}")))?;
    if archive.len() > limits.max_files {
        return Err(bad(format!(
            "{} entries; the most accepted is {}",
            archive.len(),
            limits.max_files
        )));
    }
    let mut parts = Vec::new();
    let mut left = limits.max_unpacked;
    for index in 0..archive.len() {
        let mut file = archive
            .by_index(index)
            .map_err(|e| bad(format!("entry {index}: {e}")))?;
        if file.is_dir() {
            continue;
        }
        let Some(name) = file.enclosed_name() else {
            return Err(bad(format!(
                "entry `{}` has an unsafe path (absolute or with `..`)",
                file.name().unwrap_or_default()
            )));
        };
        let hidden = name.components().any(|c| {
            let c = c.as_os_str().to_string_lossy();
            c.starts_with('.') || c == "__MACOSX"
        });
        if hidden {
            continue;
        }
        let mut data = Vec::new();
        let read = (&mut file)
            .take(left + 1)
            .read_to_end(&mut data)
            .map_err(|e| {
                bad(format!(
                    "`{}`: damaged compressed data: {e}",
                    name.display()
                ))
            })?;
        if read as u64 > left {
            return Err(bad(format!(
                "inflates to more than {} bytes (the server's limit)",
                limits.max_unpacked
            )));
        }
        left -= read as u64;
        parts.push(Part {
            name: PathBuf::from("upload.zip").join(name),
            bytes: Some(data),
        });
    }
    Ok(parts)
}

/// Segments `volume` `chunk` slices at a time through `infer` (model inputs `(n,C,S,S)` →
/// probabilities `(n,2,S,S)`, however the model is reached), as `predict` does: the label map
/// (0 background, 1 GGO, 2 consolidation, 3 other lung) and the report.
pub fn segment<E>(
    recipe: &Recipe,
    volume: &Volume,
    chunk: usize,
    mut infer: impl FnMut(ndarray::Array4<f32>) -> Result<ndarray::Array4<f32>, E>,
) -> Result<(Array3<u8>, VolumeReport), E> {
    let slices = VolumeSlices::new(&recipe.preprocessing, volume);
    let thresholds = [recipe.thresholds.ggo, recipe.thresholds.consolidation];
    let mut found = VolumeLesions::new(volume.shape(), thresholds, false);
    for start in (0..slices.len()).step_by(chunk.max(1)) {
        let range = start..(start + chunk.max(1)).min(slices.len());
        let p = infer(slices.inputs(range.clone()))?;
        for (i, k) in range.enumerate() {
            found.set(k, slices.back(p.index_axis(ndarray::Axis(0), i)).view());
        }
    }
    let (labels, report, _) = crate::volume::report::assess(volume, &found.labels);
    Ok((labels, report))
}

/// The answer's files: `<name>.nii.gz` (labels on the volume's own grid and affine, through the
/// writer `predict` uses), `<name>.report.json` and `<name>.report.html`.
pub fn answer_files(
    volume: &Volume,
    labels: &Array3<u8>,
    report: &VolumeReport,
) -> crate::Result<Vec<(String, Vec<u8>)>> {
    let name = &volume.name;
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(format!("{name}.nii.gz"));
    nifti::write_labels(&path, labels.view(), volume)?;
    let nifti_bytes = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
    let json = serde_json::to_string_pretty(report).expect("a report serialises") + "\n";
    Ok(vec![
        (format!("{name}.nii.gz"), nifti_bytes),
        (format!("{name}.report.json"), json.into_bytes()),
        (
            format!("{name}.report.html"),
            report.html(volume, labels, 4)?.into_bytes(),
        ),
    ])
}

/// A zip of files, stored (the NIfTI is already compressed) except the text, deflated.
pub fn zip_files(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        let method = if name.ends_with(".gz") {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .unix_permissions(0o644);
        out.start_file(name.as_str(), options)
            .and_then(|()| out.write_all(bytes).map_err(Into::into))
            .expect("a zip in memory");
    }
    out.finish().expect("a zip in memory").into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use crate::data::intensity::{Normalize, Preprocessing, SourceKind, Window};
    use crate::data::phantom::{VolumePhantomConfig, VolumeSetPaths, write_volume_set};
    use crate::training::Thresholds;

    const LIMITS: VolumeLimits = VolumeLimits {
        max_side: 1024,
        max_slices: 1000,
        max_files: 2000,
        max_unpacked: 1 << 30,
    };

    /// Two phantom volumes of 64² × 6 as NIfTI and DICOM under a temp folder.
    fn phantoms(dir: &Path) -> VolumeSetPaths {
        let paths = VolumeSetPaths {
            nifti: dir.join("nifti"),
            labels: dir.join("labels"),
            dicom: dir.join("dicom"),
        };
        let config = VolumePhantomConfig {
            volumes: 2,
            slices: 6,
            size: 64,
            ..Default::default()
        };
        write_volume_set(&config, 9, &paths, &NoProgress).unwrap();
        paths
    }

    fn zip_folder(dirs: &[&Path]) -> Vec<u8> {
        let mut files = Vec::new();
        for dir in dirs {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for path in entries {
                let folder = dir.file_name().unwrap().to_string_lossy();
                let name = format!("{folder}/{}", path.file_name().unwrap().to_string_lossy());
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
        zip_files(&files)
    }

    fn same_volume(a: &Volume, b: &Volume) {
        assert_eq!(a.shape(), b.shape());
        assert_eq!(a.hu, b.hu);
        for (x, y) in a.affine.0.iter().flatten().zip(b.affine.0.iter().flatten()) {
            assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", a.affine, b.affine);
        }
    }

    #[test]
    fn uploads_read_as_the_files_do() {
        let dir = tempfile::tempdir().unwrap();
        let paths = phantoms(dir.path());
        let file = paths.nifti.join("phantom-000.nii.gz");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(VolumeFormat::sniff(&bytes), Some(VolumeFormat::Nifti));
        let upload = decode(&bytes, Some(VolumeFormat::Nifti), "p0", &LIMITS).unwrap();
        assert_eq!(upload.name, "p0");
        same_volume(&upload, &nifti::read(&file).unwrap());

        // The same volume as a zipped DICOM series gives the same voxels and geometry.
        let series = paths.dicom.join("phantom-000");
        let zipped = zip_folder(&[&series]);
        assert_eq!(VolumeFormat::sniff(&zipped), Some(VolumeFormat::DicomZip));
        let upload = decode(&zipped, None, "p0", &LIMITS).unwrap();
        let read = crate::volume::read(&series).unwrap().remove(0);
        same_volume(&upload, &read);
        assert!(matches!(upload.source, crate::volume::Source::Dicom(_)));

        // An uncompressed .nii too.
        let raw = {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        assert_eq!(VolumeFormat::sniff(&raw), Some(VolumeFormat::Nifti));
        same_volume(&decode(&raw, None, "p0", &LIMITS).unwrap(), &upload);
    }

    fn error(bytes: &[u8], format: Option<VolumeFormat>, limits: &VolumeLimits) -> String {
        match decode(bytes, format, "v", limits) {
            Err(RequestError::Invalid(m) | RequestError::Unsupported(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_and_oversized_uploads_are_refused_before_they_are_inflated() {
        let dir = tempfile::tempdir().unwrap();
        let paths = phantoms(dir.path());
        let nii = std::fs::read(paths.nifti.join("phantom-000.nii.gz")).unwrap();
        let few = VolumeLimits {
            max_slices: 5,
            ..LIMITS
        };
        assert!(error(&nii, None, &few).contains("6 slices; the most accepted is 5"));
        let narrow = VolumeLimits {
            max_side: 32,
            ..LIMITS
        };
        assert!(error(&nii, None, &narrow).contains("64×64 voxels; the largest accepted is 32×32"));
        assert!(
            error(b"hello", None, &LIMITS).starts_with("the body is not a NIfTI volume"),
            "{}",
            error(b"hello", None, &LIMITS)
        );
        assert!(error(&nii, Some(VolumeFormat::DicomZip), &LIMITS).contains("declared a zip"));
        assert!(error(&nii[..400], None, &LIMITS).contains("upload.nii.gz"));

        // A header declaring 30000 slices in a few hundred bytes: refused from the header.
        let mut header = vec![0u8; 352];
        header[0..4].copy_from_slice(&348i32.to_le_bytes());
        for (at, v) in [
            (40, 3i16),
            (42, 64),
            (44, 64),
            (46, 30000),
            (70, 4),
            (72, 16),
        ] {
            header[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        header[108..112].copy_from_slice(&352f32.to_le_bytes());
        header[344..348].copy_from_slice(b"n+1\0");
        assert!(error(&header, None, &LIMITS).contains("30000 slices"));

        // Zips: damaged, too many files, inflating past the limit, unsafe paths, two series.
        let series = paths.dicom.join("phantom-000");
        let zipped = zip_folder(&[&series]);
        let mut damaged = zipped.clone();
        let cut = damaged.len() - 30;
        damaged.truncate(cut);
        assert!(error(&damaged, None, &LIMITS).starts_with("upload.zip: not a readable zip"));
        let max_files = VolumeLimits {
            max_files: 3,
            ..LIMITS
        };
        assert!(error(&zipped, None, &max_files).contains("6 entries; the most accepted is 3"));
        let small = VolumeLimits {
            max_unpacked: 10_000,
            ..LIMITS
        };
        assert!(error(&zipped, None, &small).contains("inflates to more than 10000 bytes"));
        let escape = zip_files(&[("../../etc/x.dcm".into(), vec![0; 10])]);
        assert!(error(&escape, None, &LIMITS).contains("unsafe path"));
        let two = zip_folder(&[&series, &paths.dicom.join("phantom-001")]);
        let m = error(&two, None, &LIMITS);
        assert!(
            m.contains("holds 2 series") && m.contains("phantom-001"),
            "{m}"
        );
        let none = zip_files(&[("notes.txt".into(), b"no images".to_vec())]);
        assert!(error(&none, None, &LIMITS).contains("no DICOM images"));
    }

    #[test]
    fn chunks_do_not_change_the_labels_and_the_answer_reads_back_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let paths = phantoms(dir.path());
        let volume = nifti::read(&paths.nifti.join("phantom-001.nii.gz")).unwrap();
        let recipe = Recipe {
            preprocessing: Preprocessing {
                source: SourceKind::Hu,
                windows: vec![Window::LUNG],
                size: 48,
                normalize: Normalize::None,
                shift: vec![0.0],
                scale: vec![1.0],
                pixel_mm: Some(7.0),
            },
            thresholds: Thresholds {
                ggo: 0.5,
                consolidation: 0.5,
            },
        };
        // A stand-in model: GGO where the windowed input is mid-grey, consolidation where bright.
        let model = |x: ndarray::Array4<f32>| -> Result<ndarray::Array4<f32>, String> {
            let (n, _, s, _) = x.dim();
            Ok(ndarray::Array4::from_shape_fn(
                (n, 2, s, s),
                |(i, c, y, z)| {
                    let v = x[[i, 0, y, z]];
                    f32::from(if c == 0 {
                        (0.3..0.6).contains(&v)
                    } else {
                        v >= 0.6
                    })
                },
            ))
        };
        let (one, report_one) = segment(&recipe, &volume, 1, model).unwrap();
        let (four, report_four) = segment(&recipe, &volume, 4, model).unwrap();
        assert_eq!(one, four);
        assert_eq!(
            report_one.involvement_percent.whole,
            report_four.involvement_percent.whole
        );
        assert!(one.iter().any(|&l| l == 1) && one.iter().any(|&l| l == 3));

        let files = answer_files(&volume, &one, &report_one).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "phantom-001.nii.gz",
                "phantom-001.report.json",
                "phantom-001.report.html"
            ]
        );
        let zipped = zip_files(&files);
        let mut archive = zip::ZipArchive::new(Cursor::new(&zipped[..])).unwrap();
        let mut nii = Vec::new();
        archive
            .by_name("phantom-001.nii.gz")
            .unwrap()
            .read_to_end(&mut nii)
            .unwrap();
        let back = nifti::read_bytes(Path::new("labels.nii.gz"), &nii, true).unwrap();
        assert_eq!(back.hu.mapv(|v| v as u8), one);
        same_volume(
            &Volume {
                hu: back.hu.mapv(|_| 0.0),
                ..back.clone()
            },
            &Volume {
                hu: volume.hu.mapv(|_| 0.0),
                ..volume.clone()
            },
        );
        let mut json = String::new();
        archive
            .by_name("phantom-001.report.json")
            .unwrap()
            .read_to_string(&mut json)
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["volume"], "phantom-001");
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name(None), "volume");
        assert_eq!(safe_name(Some("../../etc/passwd")), "_.._etc_passwd");
        assert_eq!(safe_name(Some("CT 0042.a")), "CT_0042.a");
        assert_eq!(safe_name(Some("...")), "volume");
    }
}
