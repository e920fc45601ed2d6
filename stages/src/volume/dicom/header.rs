//! What one DICOM file says about its slices, read without decoding pixels: identity, size,
//! and the plane (position, orientation, pixel spacing) of each frame, from the top-level
//! attributes or, in an enhanced multi-frame file, from its functional groups.

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, Tag};

/// SOP classes that are not images to stack (segmentations, structure sets, reports…).
const NOT_IMAGES: [(&str, &str); 4] = [
    ("1.2.840.10008.5.1.4.1.1.66.4", "a DICOM SEG (segmentation)"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "an RT structure set"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a structured report"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "an encapsulated PDF"),
];

/// One frame's place in the patient (LPS mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plane {
    /// ImagePositionPatient: the centre of the first pixel.
    pub position: [f64; 3],
    /// ImageOrientationPatient: the row direction, then the column direction.
    pub orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns (mm).
    pub spacing: [f64; 2],
    /// The frame within its file.
    pub frame: u32,
}

/// The header of one image file.
#[derive(Debug, Clone)]
pub struct FileHeader {
    pub sop_class: String,
    pub sop_instance: String,
    pub series_uid: String,
    pub study_uid: String,
    pub series_number: Option<i64>,
    pub modality: String,
    pub transfer_syntax: String,
    pub rows: u32,
    pub columns: u32,
    pub samples_per_pixel: u16,
    pub photometric: String,
    pub slice_thickness: Option<f64>,
    pub planes: Vec<Plane>,
    /// A Modality LUT Sequence, which covseg cannot apply.
    pub modality_lut_sequence: bool,
}

/// Why a file is not a slice to stack.
#[derive(Debug)]
pub enum Skip {
    /// Not an image (a SEG, a report…): skipped with a note.
    NotAnImage(String),
    /// An image without what a volume needs: an error.
    Invalid(String),
}

impl FileHeader {
    pub fn read(obj: &InMemDicomObject, transfer_syntax: &str) -> Result<Self, Skip> {
        let sop_class = text(obj, tags::SOP_CLASS_UID).unwrap_or_default();
        if let Some((_, what)) = NOT_IMAGES
            .iter()
            .find(|(uid, _)| sop_class.starts_with(uid))
        {
            return Err(Skip::NotAnImage(what.to_string()));
        }
        let (Some(rows), Some(columns)) = (
            int(obj, tags::ROWS).filter(|&v| v > 0),
            int(obj, tags::COLUMNS).filter(|&v| v > 0),
        ) else {
            return Err(Skip::NotAnImage("no image (no Rows/Columns)".into()));
        };
        if rows > 65535 || columns > 65535 {
            return Err(Skip::Invalid(format!("absurd image size {rows}×{columns}")));
        }
        let frames = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
        if !(1..=100_000).contains(&frames) {
            return Err(Skip::Invalid(format!(
                "NumberOfFrames {frames}: expected 1 to 100000"
            )));
        }
        let planes = planes(obj, frames as u32).map_err(Skip::Invalid)?;
        Ok(Self {
            sop_class,
            sop_instance: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
            series_uid: text(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            study_uid: text(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
            series_number: int(obj, tags::SERIES_NUMBER),
            modality: text(obj, tags::MODALITY).unwrap_or_default(),
            transfer_syntax: transfer_syntax.trim_end_matches('\0').trim().to_owned(),
            rows: rows as u32,
            columns: columns as u32,
            samples_per_pixel: int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1) as u16,
            photometric: text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
            slice_thickness: floats(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
            planes,
            modality_lut_sequence: obj
                .element_opt(tags::MODALITY_LUT_SEQUENCE)
                .ok()
                .flatten()
                .is_some(),
        })
    }
}

/// Each frame's plane: per-frame functional groups first, then shared ones, then the top level.
fn planes(obj: &InMemDicomObject, frames: u32) -> Result<Vec<Plane>, String> {
    let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|s| s.first());
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if let Some(per_frame) = per_frame
        && per_frame.len() as u32 != frames
    {
        return Err(format!(
            "PerFrameFunctionalGroupsSequence has {} items for {frames} frames",
            per_frame.len()
        ));
    }
    (0..frames)
        .map(|frame| {
            let own = per_frame.map(|p| &p[frame as usize]);
            let groups: Vec<&InMemDicomObject> = own.into_iter().chain(shared).collect();
            let find = |seq: Tag, tag: Tag, n: usize| {
                groups
                    .iter()
                    .filter_map(|g| items(g, seq).and_then(|s| s.first()))
                    .find_map(|item| floats(item, tag))
                    .or_else(|| floats(obj, tag))
                    .filter(|v| v.len() >= n && v.iter().all(|x| x.is_finite()))
            };
            let where_ = if frames > 1 {
                format!(" for frame {}", frame + 1)
            } else {
                String::new()
            };
            let position = find(
                tags::PLANE_POSITION_SEQUENCE,
                tags::IMAGE_POSITION_PATIENT,
                3,
            )
            .ok_or_else(|| {
                format!("no ImagePositionPatient{where_}: the slice has no place in a volume")
            })?;
            let orientation = find(
                tags::PLANE_ORIENTATION_SEQUENCE,
                tags::IMAGE_ORIENTATION_PATIENT,
                6,
            )
            .ok_or_else(|| format!("no ImageOrientationPatient{where_}"))?;
            let spacing = find(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING, 2)
                .ok_or_else(|| format!("no PixelSpacing{where_}"))?;
            if spacing[0] <= 0.0 || spacing[1] <= 0.0 {
                return Err(format!(
                    "PixelSpacing {spacing:?}{where_}: must be positive"
                ));
            }
            Ok(Plane {
                position: [position[0], position[1], position[2]],
                orientation: std::array::from_fn(|i| orientation[i]),
                spacing: [spacing[0], spacing[1]],
                frame,
            })
        })
        .collect()
}

fn element(obj: &InMemDicomObject, tag: Tag) -> Option<&dicom_object::mem::InMemElement> {
    obj.element_opt(tag).ok().flatten()
}

pub(super) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = element(obj, tag)?.to_str().ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    element(obj, tag)?.to_int::<i64>().ok()
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    element(obj, tag)?.to_multi_float64().ok()
}

fn items(obj: &InMemDicomObject, tag: Tag) -> Option<&[InMemDicomObject]> {
    element(obj, tag)?.value().items()
}
