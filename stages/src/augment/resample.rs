//! Resampling through the composed coordinate map: bilinear for the image, nearest neighbour for
//! the labels, both reading 0 outside the slice, in loops shaped for the compiler to vectorise.

use std::borrow::Cow;

use super::fast_math::floor_small;
use super::spatial::{Geometry, RowScratch};

/// Output pixels are visited in tiles of `BAND` rows × `TILE` columns, so that a rotated tile
/// reads a compact patch of the source where a row of a rotated output walks it diagonally (worth
/// about 5 % at 512² on the benchmark machine, whose L2 holds the whole slice).
const BAND: usize = 16;
const TILE: usize = 64;

/// The general case of `spatial::warp`: every output pixel through `geometry`'s map.
pub(super) fn resample(
    image: &[f32],
    labels: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    geometry: &Geometry,
) -> (Vec<f32>, Vec<u8>) {
    let plane = height * width;
    let mut out = vec![0.0f32; channels * plane];
    let mut out_labels = vec![0u8; plane];
    if plane == 0 {
        return (out, out_labels);
    }
    let source = Source::new(image, labels, channels, height, width);
    let (mut sx, mut sy) = (vec![0.0f32; BAND * width], vec![0.0f32; BAND * width]);
    let mut scratch = RowScratch {
        xs: (0..width).map(|x| x as f32).collect(),
        dx: vec![0.0; width],
        dy: vec![0.0; width],
        grid: Vec::new(),
    };
    let mut taps = Taps::default();

    for band in (0..height).step_by(BAND) {
        let rows = band..(band + BAND).min(height);
        for (i, y) in rows.clone().enumerate() {
            let line = i * width..(i + 1) * width;
            geometry.source_row(y, &mut sx[line.clone()], &mut sy[line], &mut scratch);
        }
        for tile in (0..width).step_by(TILE) {
            let cols = tile..(tile + TILE).min(width);
            for (i, y) in rows.clone().enumerate() {
                let segment = i * width + cols.start..i * width + cols.end;
                let (xs, ys) = (&sx[segment.clone()], &sy[segment]);
                if source.holds_blocks_around(xs, ys) {
                    taps.locate_inside(xs, ys, source.width);
                } else {
                    taps.locate(xs, ys, &source);
                }
                let pixels = y * width + cols.start..y * width + cols.end;
                for c in 0..channels {
                    let dst = &mut out[c * plane..(c + 1) * plane][pixels.clone()];
                    taps.bilinear(source.channel(c), source.width, dst);
                }
                taps.nearest(&source.labels, &mut out_labels[pixels]);
            }
        }
    }
    (out, out_labels)
}

/// The slice being resampled, at least 2×2 so that every 2×2 neighbourhood can be clamped inside
/// it: a thinner one is copied with a zero column or row added, which reads exactly as the
/// outside it stands for.
struct Source<'a> {
    image: Cow<'a, [f32]>,
    labels: Cow<'a, [u8]>,
    width: usize,
    height: usize,
}

impl<'a> Source<'a> {
    fn new(
        image: &'a [f32],
        labels: &'a [u8],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Self {
        if height >= 2 && width >= 2 {
            return Self {
                image: Cow::Borrowed(image),
                labels: Cow::Borrowed(labels),
                width,
                height,
            };
        }
        let (h, w) = (height.max(2), width.max(2));
        let mut padded = vec![0.0; channels * h * w];
        let mut padded_labels = vec![0; h * w];
        for c in 0..channels {
            for y in 0..height {
                for x in 0..width {
                    padded[(c * h + y) * w + x] = image[(c * height + y) * width + x];
                }
            }
        }
        for y in 0..height {
            for x in 0..width {
                padded_labels[y * w + x] = labels[y * width + x];
            }
        }
        Self {
            image: Cow::Owned(padded),
            labels: Cow::Owned(padded_labels),
            width: w,
            height: h,
        }
    }

    /// Whether the 2×2 block below and right of every position lies inside the slice, which is
    /// the case for most runs (all of them in a zoom-in) and lets `Taps::locate_inside` skip the
    /// border handling.
    fn holds_blocks_around(&self, sx: &[f32], sy: &[f32]) -> bool {
        let (lo_x, hi_x) = sx
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let (lo_y, hi_y) = sy
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        lo_x >= 0.0
            && lo_y >= 0.0
            && hi_x < (self.width - 1) as f32
            && hi_y < (self.height - 1) as f32
    }

    fn channel(&self, c: usize) -> &[f32] {
        let plane = self.width * self.height;
        &self.image[c * plane..(c + 1) * plane]
    }
}

/// How a run of up to `TILE` output pixels reads the source: the top-left pixel of a 2×2 block
/// inside the source and the bilinear weights of its columns and rows. A position near or beyond
/// the border keeps a block inside and moves its weights onto the block's pixels that it really
/// touches, with zero for neighbours outside the slice, which is how those read as 0. Computed in
/// a branch-free loop over separate arrays that the compiler vectorises, so the gathers that
/// follow are a few instructions per pixel.
struct Taps {
    base: [u32; TILE],
    left: [f32; TILE],
    right: [f32; TILE],
    top: [f32; TILE],
    bottom: [f32; TILE],
    /// The nearest source pixel, `u32::MAX` when it lies outside.
    nearest: [u32; TILE],
    len: usize,
}

impl Default for Taps {
    fn default() -> Self {
        Self {
            base: [0; TILE],
            left: [0.0; TILE],
            right: [0.0; TILE],
            top: [0.0; TILE],
            bottom: [0.0; TILE],
            nearest: [0; TILE],
            len: 0,
        }
    }
}

/// The weights of block columns `c` and `c + 1` (or rows) for a position between pixels `i` and
/// `i + 1` at fraction `t`, given whether each of those pixels is inside the slice.
fn block_weights(i: i32, t: f32, c: i32, inside: (bool, bool)) -> (f32, f32) {
    let near = if inside.0 { 1.0 - t } else { 0.0 };
    let far = if inside.1 { t } else { 0.0 };
    let first = if i == c { near } else { 0.0 } + if i + 1 == c { far } else { 0.0 };
    let second = if i == c + 1 { near } else { 0.0 } + if i + 1 == c + 1 { far } else { 0.0 };
    (first, second)
}

impl Taps {
    fn locate(&mut self, sx: &[f32], sy: &[f32], source: &Source) {
        let n = sx.len().min(sy.len()).min(TILE);
        self.len = n;
        let (w, h) = (source.width as i32, source.height as i32);
        let (wf, hf) = (w as f32, h as f32);
        for k in 0..n {
            // Shifted by 2 so the floor works on non-negative numbers; a position beyond −2 or
            // W + 1 has only zeros around it, as has the clamped one.
            // `max`/`min` rather than `clamp`, whose check of its bounds would stay in the loop.
            let px = sx[k].max(-2.0).min(wf + 1.0) + 2.0;
            let py = sy[k].max(-2.0).min(hf + 1.0) + 2.0;
            let (ix, iy) = (floor_small(px) - 2, floor_small(py) - 2);
            let (tx, ty) = (px - (ix + 2) as f32, py - (iy + 2) as f32);
            let (cx, cy) = (ix.max(0).min(w - 2), iy.max(0).min(h - 2));
            let inside_x = ((0..w).contains(&ix), (0..w).contains(&(ix + 1)));
            let inside_y = ((0..h).contains(&iy), (0..h).contains(&(iy + 1)));
            self.base[k] = (cy * w + cx) as u32;
            (self.left[k], self.right[k]) = block_weights(ix, tx, cx, inside_x);
            (self.top[k], self.bottom[k]) = block_weights(iy, ty, cy, inside_y);
            let nx = ix + i32::from(tx >= 0.5);
            let ny = iy + i32::from(ty >= 0.5);
            self.nearest[k] = if (0..w).contains(&nx) & (0..h).contains(&ny) {
                (ny * w + nx) as u32
            } else {
                u32::MAX
            };
        }
    }

    /// `locate` for positions whose 2×2 blocks all lie inside the slice.
    fn locate_inside(&mut self, sx: &[f32], sy: &[f32], width: usize) {
        let n = sx.len().min(sy.len()).min(TILE);
        self.len = n;
        let w = width as i32;
        for k in 0..n {
            let (ix, iy) = (floor_small(sx[k]), floor_small(sy[k]));
            let (tx, ty) = (sx[k] - ix as f32, sy[k] - iy as f32);
            let base = iy * w + ix;
            self.base[k] = base as u32;
            (self.left[k], self.right[k]) = (1.0 - tx, tx);
            (self.top[k], self.bottom[k]) = (1.0 - ty, ty);
            let nearest = base + i32::from(tx >= 0.5) + if ty >= 0.5 { w } else { 0 };
            self.nearest[k] = nearest as u32;
        }
    }

    fn bilinear(&self, src: &[f32], width: usize, dst: &mut [f32]) {
        let n = self.len.min(dst.len());
        let weights = (self.left[..n].iter().zip(&self.right[..n]))
            .zip(self.top[..n].iter().zip(&self.bottom[..n]));
        for ((v, &base), ((&left, &right), (&top, &bottom))) in
            dst[..n].iter_mut().zip(&self.base[..n]).zip(weights)
        {
            // One bounds check for the whole 2×2 block.
            let i = base as usize;
            let block = &src[i..i + width + 2];
            let upper = block[0] * left + block[1] * right;
            let lower = block[width] * left + block[width + 1] * right;
            *v = upper * top + lower * bottom;
        }
    }

    /// Nearest neighbour: rounds half up, towards the cell the bilinear weights favour.
    fn nearest(&self, src: &[u8], dst: &mut [u8]) {
        let n = self.len.min(dst.len());
        for (v, &index) in dst[..n].iter_mut().zip(&self.nearest[..n]) {
            *v = src.get(index as usize).copied().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_exact_on_pixels_and_reads_zero_outside() {
        let source = Source::new(&[1.0, 2.0, 3.0, 4.0], &[1, 2, 3, 4], 1, 2, 2);
        let sample = |px: f32, py: f32| {
            let mut taps = Taps::default();
            taps.locate(&[px], &[py], &source);
            let (mut out, mut label) = ([9.0f32], [9u8]);
            taps.bilinear(source.channel(0), source.width, &mut out);
            taps.nearest(&source.labels, &mut label);
            (out[0], label[0])
        };
        assert_eq!(sample(1.0, 1.0), (4.0, 4));
        assert_eq!(sample(0.0, 1.0), (3.0, 3));
        assert_eq!(sample(0.5, 0.5), (2.5, 4));
        assert_eq!(sample(0.25, 0.0), (1.25, 1));
        assert_eq!(sample(1.5, 0.0), (1.0, 0));
        assert_eq!(sample(-0.5, -0.25), (0.375, 1));
        assert_eq!(sample(0.5, 1.5), (1.75, 0));
        assert_eq!(sample(-3.0, 0.0), (0.0, 0));
        assert_eq!(sample(0.0, 7.0), (0.0, 0));
        assert_eq!(sample(f32::MAX, f32::MIN), (0.0, 0));
    }

    #[test]
    fn the_inside_shortcut_agrees_with_the_general_path() {
        let (h, w) = (9, 13);
        let image: Vec<f32> = (0..h * w).map(|i| ((i * 29) % 17) as f32 / 17.0).collect();
        let labels: Vec<u8> = (0..h * w).map(|i| (i % 5) as u8).collect();
        let source = Source::new(&image, &labels, 1, h, w);
        // Positions spread over the interior, including exact pixels and half-way points.
        let sx: Vec<f32> = (0..TILE).map(|k| (k * 7 % 24) as f32 * 0.5).collect();
        let sy: Vec<f32> = (0..TILE)
            .map(|k| (k * 5 % 16) as f32 * 0.5 + 0.01)
            .collect();
        assert!(source.holds_blocks_around(&sx, &sy));
        let run = |inside: bool| {
            let mut taps = Taps::default();
            if inside {
                taps.locate_inside(&sx, &sy, w);
            } else {
                taps.locate(&sx, &sy, &source);
            }
            let (mut out, mut out_labels) = ([0.0f32; TILE], [0u8; TILE]);
            taps.bilinear(source.channel(0), w, &mut out);
            taps.nearest(&source.labels, &mut out_labels);
            (out, out_labels)
        };
        let ((fast, fast_labels), (general, general_labels)) = (run(true), run(false));
        assert_eq!(fast_labels, general_labels);
        for (a, b) in fast.iter().zip(&general) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let mut edge = sx.clone();
        edge[3] = (w - 1) as f32;
        assert!(!source.holds_blocks_around(&edge, &sy));
    }

    #[test]
    fn thin_slices_read_like_wide_ones() {
        // A 1×3 slice, padded to 2×3 inside, samples as if the missing row were outside.
        let source = Source::new(&[1.0, 2.0, 3.0], &[1, 2, 3], 1, 1, 3);
        assert_eq!((source.height, source.width), (2, 3));
        let mut taps = Taps::default();
        taps.locate(&[1.5, 2.0, 0.0], &[0.0, 0.5, -0.5], &source);
        let (mut out, mut labels) = ([0.0f32; 3], [0u8; 3]);
        taps.bilinear(source.channel(0), source.width, &mut out);
        taps.nearest(&source.labels, &mut labels);
        assert_eq!(out, [2.5, 1.5, 0.5]);
        assert_eq!(labels, [3, 0, 1]);
    }
}
