//! Pictures for people: CT slices with label overlays (GGO red, consolidation green, other lung a
//! faint blue) and grids of them, written as PNG.

use std::path::Path;

use image::{Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::{Error, Result};

const GGO: [f32; 3] = [230.0, 40.0, 40.0];
const CONSOLIDATION: [f32; 3] = [40.0, 210.0, 60.0];
const OTHER_LUNG: [f32; 3] = [70.0, 120.0, 255.0];

/// A grey slice in [0,1] with labels blended over it.
pub fn overlay(image: ArrayView2<f32>, labels: ArrayView2<u8>) -> RgbImage {
    let (h, w) = image.dim();
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let grey = image[[y, x]].clamp(0.0, 1.0) * 255.0;
        let (colour, alpha) = match labels[[y, x]] {
            1 => (GGO, 0.45),
            2 => (CONSOLIDATION, 0.45),
            3 => (OTHER_LUNG, 0.12),
            _ => ([grey; 3], 0.0),
        };
        let mix = |c: f32| (grey * (1.0 - alpha) + c * alpha).round() as u8;
        Rgb([mix(colour[0]), mix(colour[1]), mix(colour[2])])
    })
}

/// Tiles laid out row by row, `columns` wide, with a 2-pixel dark gap; tiles may differ in size
/// (each cell is as large as the largest tile).
pub fn grid(tiles: &[RgbImage], columns: usize) -> RgbImage {
    let columns = columns.max(1);
    let rows = tiles.len().div_ceil(columns).max(1);
    let cell_w = tiles.iter().map(RgbImage::width).max().unwrap_or(1);
    let cell_h = tiles.iter().map(RgbImage::height).max().unwrap_or(1);
    let gap = 2;
    let mut out = RgbImage::from_pixel(
        columns as u32 * (cell_w + gap) + gap,
        rows as u32 * (cell_h + gap) + gap,
        Rgb([20, 20, 20]),
    );
    for (i, tile) in tiles.iter().enumerate() {
        let (cx, cy) = ((i % columns) as u32, (i / columns) as u32);
        image::imageops::replace(
            &mut out,
            tile,
            i64::from(gap + cx * (cell_w + gap)),
            i64::from(gap + cy * (cell_h + gap)),
        );
    }
    out
}

/// Shrinks a tile to at most `max` pixels on its longer side (nearest, to keep label edges crisp).
pub fn fit(tile: RgbImage, max: u32) -> RgbImage {
    let longest = tile.width().max(tile.height());
    if longest <= max {
        return tile;
    }
    let (w, h) = (
        (tile.width() * max / longest).max(1),
        (tile.height() * max / longest).max(1),
    );
    image::imageops::resize(&tile, w, h, image::imageops::FilterType::Nearest)
}

/// Brings a tile to about `size` pixels on its longer side: [`fit`] for larger tiles, and for
/// smaller ones the largest whole-number enlargement that stays within `size` (nearest, so each
/// pixel becomes a crisp block), so a 64-pixel slice is shown at 256 pixels, not as a thumbnail.
pub fn at_size(tile: RgbImage, size: u32) -> RgbImage {
    let longest = tile.width().max(tile.height()).max(1);
    let factor = size / longest;
    if factor <= 1 {
        return fit(tile, size);
    }
    let (w, h) = (tile.width() * factor, tile.height() * factor);
    image::imageops::resize(&tile, w, h, image::imageops::FilterType::Nearest)
}

pub fn save_png(path: &Path, picture: &RgbImage) -> Result<()> {
    picture
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::invalid_data(path, format!("cannot write the PNG: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn overlay_colours_lesions_and_keeps_background_grey() {
        let image = Array2::from_elem((2, 2), 0.5);
        let labels = Array2::from_shape_vec((2, 2), vec![0, 1, 2, 3]).unwrap();
        let pic = overlay(image.view(), labels.view());
        let grey = pic.get_pixel(0, 0);
        assert_eq!(grey[0], grey[1]);
        let ggo = pic.get_pixel(1, 0);
        assert!(ggo[0] > ggo[1] + 50, "GGO is red");
        let cons = pic.get_pixel(0, 1);
        assert!(cons[1] > cons[0] + 50, "consolidation is green");
    }

    #[test]
    fn grid_places_tiles() {
        let tiles = vec![RgbImage::from_pixel(4, 4, Rgb([255, 0, 0])); 3];
        let g = grid(&tiles, 2);
        assert_eq!((g.width(), g.height()), (2 * 6 + 2, 2 * 6 + 2));
        assert_eq!(g.get_pixel(2, 2), &Rgb([255, 0, 0]));
        assert_eq!(
            g.get_pixel(8 + 2, 8 + 2),
            &Rgb([20, 20, 20]),
            "the fourth cell is empty"
        );
    }

    #[test]
    fn at_size_enlarges_small_tiles_by_whole_blocks_and_shrinks_large_ones() {
        let mut tile = RgbImage::from_pixel(64, 48, Rgb([0, 0, 0]));
        tile.put_pixel(1, 0, Rgb([255, 0, 0]));
        let big = at_size(tile, 256);
        assert_eq!((big.width(), big.height()), (256, 192));
        assert_eq!(
            big.get_pixel(4, 0),
            &Rgb([255, 0, 0]),
            "pixel 1 covers x 4…7"
        );
        assert_eq!(big.get_pixel(7, 3), &Rgb([255, 0, 0]));
        assert_eq!(big.get_pixel(8, 0), &Rgb([0, 0, 0]));
        let odd = at_size(RgbImage::new(100, 100), 256);
        assert_eq!(odd.width(), 200, "the largest whole factor within 256");
        let large = at_size(RgbImage::new(512, 512), 256);
        assert_eq!(large.width(), 256);
    }
}
