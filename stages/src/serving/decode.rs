//! Uploaded slices: PNG and JPEG (8-bit windowed grey, like image folders) and `.npy` HU slices
//! `(H,W)` or `(N,H,W[,1])`. Dimensions are checked from the header before any pixel buffer is
//! allocated, so a PNG that declares 60000×60000 is refused in microseconds.

use std::io::Cursor;
use std::path::Path;

use ndarray::{Array2, Axis};
use ndarray_npy::ReadNpyExt;

use super::RequestError;
use crate::data::intensity::SourceKind;
use crate::data::npy::Header;

/// What an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Npy,
}

impl Format {
    /// The format a `Content-Type` names (parameters such as `; charset` ignored); `None` for a
    /// type the endpoint does not take. `application/octet-stream` means "look at the bytes".
    pub fn from_content_type(content_type: &str) -> Option<Option<Format>> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "image/png" => Some(Some(Format::Png)),
            "image/jpeg" | "image/jpg" => Some(Some(Format::Jpeg)),
            "application/x-npy" | "application/npy" => Some(Some(Format::Npy)),
            "application/octet-stream" | "" => Some(None),
            _ => None,
        }
    }

    /// The format the first bytes show.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(b"\x93NUMPY") {
            Some(Format::Npy)
        } else {
            None
        }
    }
}

/// How large an upload may be in pixels; checked from headers, before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width and height of a slice.
    pub max_side: usize,
    /// Most slices in one upload.
    pub max_slices: usize,
    /// Most bytes a decoder may allocate.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 2048,
            max_slices: 64,
            max_alloc: 64 << 20,
        }
    }
}

/// Decoded slices, in their source's units: HU for `.npy`, 0…255 grey for images.
#[derive(Debug, Clone)]
pub struct Slices {
    pub source: SourceKind,
    pub slices: Vec<Array2<f32>>,
}

/// Decodes an upload. `declared` is the format from the `Content-Type` (`None`: sniff the bytes);
/// a body whose bytes contradict its declared format is an error, not a guess.
pub fn decode(
    bytes: &[u8],
    declared: Option<Format>,
    limits: &DecodeLimits,
) -> Result<Slices, RequestError> {
    let format = super::resolve_format(
        declared,
        Format::sniff(bytes),
        name,
        "the body is not a PNG, JPEG or .npy slice; send image/png, image/jpeg or application/x-npy",
    )?;
    match format {
        Format::Png | Format::Jpeg => image(bytes, format, limits),
        Format::Npy => npy(bytes, limits),
    }
}

fn name(format: Format) -> &'static str {
    match format {
        Format::Png => "PNG",
        Format::Jpeg => "JPEG",
        Format::Npy => ".npy",
    }
}

fn check_side(h: usize, w: usize, limits: &DecodeLimits) -> Result<(), RequestError> {
    if h == 0 || w == 0 {
        return Err(RequestError::Invalid(format!(
            "the slice is {w}×{h}: empty"
        )));
    }
    if h > limits.max_side || w > limits.max_side {
        return Err(RequestError::Invalid(format!(
            "the slice is {w}×{h} pixels; the largest accepted is {0}×{0}",
            limits.max_side
        )));
    }
    Ok(())
}

fn image(bytes: &[u8], format: Format, limits: &DecodeLimits) -> Result<Slices, RequestError> {
    let image_format = match format {
        Format::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let reader = || {
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format);
        let mut l = image::Limits::default();
        l.max_alloc = Some(limits.max_alloc);
        reader.limits(l);
        reader
    };
    let strict = || {
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format);
        let mut l = image::Limits::default();
        l.max_image_width = Some(limits.max_side as u32);
        l.max_image_height = Some(limits.max_side as u32);
        l.max_alloc = Some(limits.max_alloc);
        reader.limits(l);
        reader
    };
    let damaged = |e: image::ImageError| {
        RequestError::Invalid(format!("cannot decode the {}: {e}", name(format)))
    };
    let (w, h) = reader().into_dimensions().map_err(damaged)?;
    check_side(h as usize, w as usize, limits)?;
    let decoded = strict().decode().map_err(damaged)?;
    use image::ColorType as C;
    if !matches!(
        decoded.color(),
        C::L8 | C::La8 | C::L16 | C::La16 | C::Rgb8 | C::Rgba8 | C::Rgb16 | C::Rgba16
    ) {
        return Err(RequestError::Invalid(format!(
            "the {} has colour type {:?}; send 8- or 16-bit grey or RGB",
            name(format),
            decoded.color()
        )));
    }
    // The same reduction to grey as an image folder's (`folder::read_grey`), so the endpoint and
    // `predict` see the same values.
    let grey = decoded.to_luma8();
    let slice = Array2::from_shape_vec((h as usize, w as usize), grey.into_raw())
        .expect("h×w pixels")
        .mapv(f32::from);
    Ok(Slices {
        source: SourceKind::EightBit,
        slices: vec![slice],
    })
}

fn npy(bytes: &[u8], limits: &DecodeLimits) -> Result<Slices, RequestError> {
    let label = Path::new("<upload>.npy");
    let header = Header::from_bytes(bytes, label)
        .map_err(|e| RequestError::Invalid(e.to_string().replacen("<upload>.npy: ", "", 1)))?;
    let shape = &header.shape;
    let (n, h, w) = match shape.as_slice() {
        [h, w] => (1, *h, *w),
        // A trailing 1 is a channel axis (`images[0]` of a Kaggle file), never a width.
        [h, w, 1] => (1, *h, *w),
        [n, h, w] => (*n, *h, *w),
        [n, h, w, 1] => (*n, *h, *w),
        _ => {
            return Err(RequestError::Invalid(format!(
                "the .npy has shape {}; send one slice (H,W) or (H,W,1), or slices (N,H,W) or (N,H,W,1)",
                header.shape_text()
            )));
        }
    };
    if header.fortran_order {
        return Err(RequestError::Invalid(
            "the .npy is in Fortran order; save it C-ordered (numpy's default)".into(),
        ));
    }
    check_side(h, w, limits)?;
    if n == 0 || n > limits.max_slices {
        return Err(RequestError::Invalid(format!(
            "the .npy holds {n} slices; send 1 to {}",
            limits.max_slices
        )));
    }
    let cursor = || Cursor::new(bytes);
    let bad =
        |e: ndarray_npy::ReadNpyError| RequestError::Invalid(format!("cannot read the .npy: {e}"));
    let (source, values): (SourceKind, ndarray::ArrayD<f32>) = match header.descr.as_str() {
        "<f8" => (
            SourceKind::Hu,
            ndarray::ArrayD::<f64>::read_npy(cursor())
                .map_err(bad)?
                .mapv(|v| v as f32),
        ),
        "<f4" => (
            SourceKind::Hu,
            ndarray::ArrayD::<f32>::read_npy(cursor()).map_err(bad)?,
        ),
        "<i2" => (
            SourceKind::Hu,
            ndarray::ArrayD::<i16>::read_npy(cursor())
                .map_err(bad)?
                .mapv(f32::from),
        ),
        "<i4" => (
            SourceKind::Hu,
            ndarray::ArrayD::<i32>::read_npy(cursor())
                .map_err(bad)?
                .mapv(|v| v as f32),
        ),
        "|u1" => (
            SourceKind::EightBit,
            ndarray::ArrayD::<u8>::read_npy(cursor())
                .map_err(bad)?
                .mapv(f32::from),
        ),
        other => {
            return Err(RequestError::Invalid(format!(
                "the .npy has dtype '{other}'; send HU as float64, float32, int16 or int32, or 8-bit grey as uint8"
            )));
        }
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(RequestError::Invalid(
            "the .npy holds NaN or infinite values".into(),
        ));
    }
    let values = values
        .into_shape_with_order((n, h, w))
        .expect("shape checked above");
    Ok(Slices {
        source,
        slices: values.axis_iter(Axis(0)).map(|s| s.to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use ndarray_npy::WriteNpyExt;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 7 + y) as u8]))
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    /// A valid PNG whose IHDR claims `w`×`h` (the CRC fixed up), with almost no data.
    pub(crate) fn png_bomb(w: u32, h: u32) -> Vec<u8> {
        let mut bytes = png(8, 8);
        bytes[16..20].copy_from_slice(&w.to_be_bytes());
        bytes[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn png_decodes_to_grey_values() {
        let s = decode(&png(5, 3), Some(Format::Png), &DecodeLimits::default()).unwrap();
        assert_eq!(s.source, SourceKind::EightBit);
        assert_eq!(s.slices[0].dim(), (3, 5));
        assert_eq!(s.slices[0][(2, 4)], 30.0);
    }

    #[test]
    fn png_bomb_is_refused_from_its_header() {
        let started = std::time::Instant::now();
        let e = decode(&png_bomb(60000, 60000), None, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(&e, RequestError::Invalid(m) if m.contains("60000")),
            "{e}"
        );
        assert!(started.elapsed().as_millis() < 1000);
    }

    #[test]
    fn npy_slices_and_shapes() {
        let mut bytes = Vec::new();
        Array3::<i16>::from_shape_fn((2, 4, 3), |(n, y, x)| (n * 100 + y * 3 + x) as i16 - 1000)
            .write_npy(&mut bytes)
            .unwrap();
        let s = decode(&bytes, Some(Format::Npy), &DecodeLimits::default()).unwrap();
        assert_eq!(s.source, SourceKind::Hu);
        assert_eq!(s.slices.len(), 2);
        assert_eq!(s.slices[1][(3, 2)], -889.0);
        let mut bad = Vec::new();
        ndarray::Array4::<f32>::zeros((1, 4, 4, 2))
            .write_npy(&mut bad)
            .unwrap();
        let e = decode(&bad, None, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("(1,4,4,2)"), "{e}");
        let truncated = &bytes[..bytes.len() - 3];
        let e = decode(truncated, None, &DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn declared_and_actual_format_must_agree() {
        let e = decode(&png(4, 4), Some(Format::Npy), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, RequestError::Invalid(_)));
        let e = decode(b"hello", None, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, RequestError::Unsupported(_)));
        assert_eq!(Format::from_content_type("text/plain"), None);
        assert_eq!(
            Format::from_content_type("image/PNG; x=1"),
            Some(Some(Format::Png))
        );
    }
}
