//! Answers as bytes: label PNGs (grey 0/1/2) and `.npy` masks.

use std::io::Cursor;

use ndarray::{Array2, Array4, ArrayView2, Axis};
use ndarray_npy::WriteNpyExt;

use super::segment::Segmented;

/// An 8-bit grey PNG of a label image (0 background, 1 GGO, 2 consolidation).
pub fn label_png(labels: &Array2<u8>) -> Vec<u8> {
    grey_png(labels.view())
}

/// An 8-bit grey PNG of values in 0…1 (a windowed slice).
pub fn display_png(values: &Array2<f32>) -> Vec<u8> {
    let bytes = values.mapv(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
    grey_png(bytes.view())
}

fn grey_png(pixels: ArrayView2<'_, u8>) -> Vec<u8> {
    let (h, w) = pixels.dim();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(Cursor::new(&mut out), w as u32, h as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let data: Vec<u8> = pixels.iter().copied().collect();
    let mut writer = encoder.write_header().expect("PNG header into memory");
    writer
        .write_image_data(&data)
        .expect("PNG data into memory");
    writer.finish().expect("PNG end into memory");
    out
}

/// The masks `(N,H,W,2)` bool (GGO, consolidation) as `.npy`, the layout of `predict`'s
/// `masks.npy`. All slices must be of one size.
pub fn masks_npy(segmented: &[Segmented]) -> Vec<u8> {
    let views: Vec<_> = segmented
        .iter()
        .map(|s| s.masks.view().insert_axis(Axis(0)))
        .collect();
    let masks: Array4<bool> = ndarray::concatenate(Axis(0), &views).expect("slices of one size");
    let mut out = Vec::new();
    masks.write_npy(&mut out).expect(".npy into memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_png_round_trips() {
        let labels = Array2::from_shape_fn((3, 4), |(y, x)| ((y + x) % 3) as u8);
        let decoded = image::load_from_memory(&label_png(&labels))
            .unwrap()
            .to_luma8();
        assert_eq!(
            decoded.into_raw(),
            labels.iter().copied().collect::<Vec<_>>()
        );
    }
}
