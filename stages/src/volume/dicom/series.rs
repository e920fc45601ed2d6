//! A series' slices put in order and given one geometry: sorted by ImagePositionPatient projected
//! on the slice normal (never by file name or InstanceNumber), with gaps, duplicates, mixed
//! orientations and sizes refused, and a gantry tilt kept in a sheared affine, with a warning.

use super::header::{FileHeader, Plane};
use crate::volume::Affine;
use crate::volume::affine::{cross, dot, norm};

/// One slice of the volume: which file and frame it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceRef {
    pub file: usize,
    pub frame: u32,
}

/// The ordered slices of a series and their voxel-to-world map.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// Slice k of the volume.
    pub slices: Vec<SliceRef>,
    pub rows: u32,
    pub columns: u32,
    /// Voxel `(i, j, k)` → RAS+ mm.
    pub affine: Affine,
    pub warnings: Vec<String>,
}

/// Orientation cosines and pixel spacings that differ by less than this are the same.
const SAME: f64 = 1e-4;

/// Orders the planes of `files` (the headers of one series; `names` for messages).
pub fn assemble(files: &[FileHeader], names: &[String]) -> Result<Geometry, String> {
    let first = files.first().ok_or("no image files")?;
    let mut planes: Vec<(Plane, SliceRef)> = Vec::new();
    for (file, h) in files.iter().enumerate() {
        if (h.rows, h.columns) != (first.rows, first.columns) {
            return Err(format!(
                "{} is {}×{} but {} is {}×{}: one series must have one image size",
                names[file], h.columns, h.rows, names[0], first.columns, first.rows
            ));
        }
        planes.extend(h.planes.iter().map(|p| {
            (
                *p,
                SliceRef {
                    file,
                    frame: p.frame,
                },
            )
        }));
    }
    let reference = planes[0].0;
    let mut other_orientation = Vec::new();
    for (p, s) in &planes {
        if p.orientation
            .iter()
            .zip(reference.orientation)
            .any(|(a, b)| (a - b).abs() > SAME)
        {
            other_orientation.push(names[s.file].clone());
        }
    }
    if !other_orientation.is_empty() {
        let n = other_orientation.len();
        return Err(format!(
            "mixed orientations: {n} of {} slices (e.g. {}) are not oriented as {} \
             (ImageOrientationPatient {:?}); a localizer or a reformat is mixed into the series: \
             move those files out of the folder",
            planes.len(),
            other_orientation[0],
            names[planes[0].1.file],
            reference.orientation
        ));
    }
    for (p, s) in &planes {
        if p.spacing
            .iter()
            .zip(reference.spacing)
            .any(|(a, b)| (a - b).abs() > SAME * b.max(1.0))
        {
            return Err(format!(
                "{} has PixelSpacing {:?} but {} has {:?}: one series must have one pixel size",
                names[s.file], p.spacing, names[planes[0].1.file], reference.spacing
            ));
        }
    }
    let o = reference.orientation;
    let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let normal = cross(row, col);
    if (norm(row) - 1.0).abs() > 1e-2
        || (norm(col) - 1.0).abs() > 1e-2
        || dot(row, col).abs() > 1e-2
    {
        return Err(format!(
            "ImageOrientationPatient {o:?} is not two orthogonal unit vectors"
        ));
    }
    let normal = normal.map(|v| v / norm(normal));
    planes.sort_by(|a, b| dot(a.0.position, normal).total_cmp(&dot(b.0.position, normal)));
    let depth: Vec<f64> = planes
        .iter()
        .map(|(p, _)| dot(p.position, normal))
        .collect();
    let mut warnings = Vec::new();
    let steps: Vec<f64> = depth.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, step) in steps.iter().enumerate() {
        if *step < 0.01 {
            return Err(format!(
                "duplicate slices: {} and {} are both at {:.3} mm along the slice normal \
                 (a file copied twice, or two series with one SeriesInstanceUID)",
                names[planes[i].1.file],
                names[planes[i + 1].1.file],
                depth[i]
            ));
        }
    }
    let step = if steps.is_empty() {
        let t = first.slice_thickness.filter(|t| *t > 0.0);
        warnings.push(format!(
            "a single slice: its thickness is {}",
            match t {
                Some(t) => format!("SliceThickness, {t} mm"),
                None => "unknown and taken as 1 mm".into(),
            }
        ));
        t.unwrap_or(1.0)
    } else {
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let tolerance = (0.01 * step).max(0.005);
    for (i, s) in steps.iter().enumerate() {
        if (s - step).abs() > tolerance {
            let what = if *s > step {
                format!(
                    "a gap: about {} slice(s) missing",
                    ((s / step).round() as i64 - 1).max(1)
                )
            } else {
                "uneven slice spacing".to_string()
            };
            return Err(format!(
                "{what} between {} ({:.3} mm) and {} ({:.3} mm): {:.3} mm apart where the \
                 series steps {:.3} mm; add the missing files, or read the parts as separate \
                 folders",
                names[planes[i].1.file],
                depth[i],
                names[planes[i + 1].1.file],
                depth[i + 1],
                s,
                step
            ));
        }
    }
    // The k column: the actual step between slice positions, which a gantry tilt shears off
    // the normal.
    let n = planes.len();
    let k = if n > 1 {
        let (a, b) = (planes[0].0.position, planes[n - 1].0.position);
        std::array::from_fn(|d| (b[d] - a[d]) / (n - 1) as f64)
    } else {
        normal.map(|v| v * step)
    };
    let tilt = (dot(k, normal) / norm(k))
        .clamp(-1.0, 1.0)
        .acos()
        .to_degrees();
    if tilt > 0.01 {
        warnings.push(format!(
            "gantry tilt: the slices are stacked {tilt:.2}° off their normal; the affine keeps \
             the sheared grid as acquired"
        ));
    }
    let [dr, dc] = reference.spacing;
    let affine = Affine::from_columns(
        row.map(|v| v * dc),
        col.map(|v| v * dr),
        k,
        planes[0].0.position,
    )
    .flip_xy();
    Ok(Geometry {
        slices: planes.into_iter().map(|(_, s)| s).collect(),
        rows: first.rows,
        columns: first.columns,
        affine,
        warnings,
    })
}
