//! CT volumes: HU voxels with their voxel-to-world geometry, read from DICOM series and NIfTI
//! files, and label maps written back as NIfTI aligned voxel for voxel with their input.
//!
//! Every reader yields the same [`Volume`]: `hu` indexed `[i, j, k]` (i along an image row, j down
//! the rows, k through the slices) and an [`Affine`] from `(i, j, k)` to RAS+ millimetres.

pub mod affine;
pub mod dicom;
pub mod lung;
pub mod morphology;
pub mod nifti;
pub mod report;

use std::path::{Path, PathBuf};

use ndarray::Array3;

pub use affine::Affine;

use crate::{Error, Result};

/// One CT volume in HU.
#[derive(Debug, Clone)]
pub struct Volume {
    /// HU, indexed `[i, j, k]`.
    pub hu: Array3<f32>,
    /// Voxel `(i, j, k)` → RAS+ mm.
    pub affine: Affine,
    /// A name for outputs and messages: the file stem, or the series folder and UID.
    pub name: String,
    /// Where the volume came from, with what a writer needs to stay aligned with it.
    pub source: Source,
    /// What the reader accepted but a user should know (gantry tilt, a 4-D file cut to 3-D, …).
    pub warnings: Vec<String>,
}

/// The origin of a volume.
#[derive(Debug, Clone)]
pub enum Source {
    /// A NIfTI-1 file; its header is the template of every mask written for it.
    Nifti {
        path: PathBuf,
        header: Box<::nifti::NiftiHeader>,
    },
    /// A DICOM series.
    Dicom(dicom::SeriesInfo),
    /// Made in memory (a phantom); written files get headers built from the affine.
    Generated,
}

impl Volume {
    /// Voxel size in mm along i, j, k.
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }

    /// Voxel volume in mL.
    pub fn voxel_ml(&self) -> f64 {
        self.affine.voxel_volume() / 1000.0
    }

    /// `[i, j, k]` sizes.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.hu.shape();
        [s[0], s[1], s[2]]
    }
}

/// Whether a path names a volume file covseg reads (`.nii`, `.nii.gz`).
pub fn is_nifti(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Reads the volumes at `path`: one from a `.nii[.gz]` file, one per series from a DICOM folder
/// (searched recursively).
pub fn read(path: &Path) -> Result<Vec<Volume>> {
    if path.is_dir() {
        dicom::read_folder(path)
    } else if is_nifti(path) {
        Ok(vec![nifti::read(path)?])
    } else if looks_like_dicom(path) {
        Ok(vec![dicom::read_file(path)?])
    } else {
        Err(Error::invalid_data(
            path,
            "not a volume: expected a `.nii` / `.nii.gz` file, a DICOM file or a folder of DICOM files",
        ))
    }
}

/// Reads every volume at `path`: as [`read`], and for a folder holding `.nii[.gz]` files, each of
/// them (in name order) instead of a DICOM search.
pub fn read_all(path: &Path) -> Result<Vec<Volume>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_nifti(p))
            .collect();
        if !files.is_empty() {
            files.sort();
            return files.iter().map(|f| nifti::read(f)).collect();
        }
    }
    read(path)
}

fn looks_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && dicom::is_dicom(&head)
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turns a panic inside a third-party decoder into an error naming the file: hostile bytes must
/// never abort covseg. (dicom-rs' RLE decoder, for one, indexes past the end of truncated data.)
/// While a guard runs, the panic hook stays quiet on this thread: the panic is reported once, as
/// the error.
pub(crate) fn guard<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match result {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(Error::invalid_data(
                path,
                format!(
                    "the {what} decoder failed on this file ({message}); the file is damaged \
                     or not supported"
                ),
            ))
        }
    }
}
