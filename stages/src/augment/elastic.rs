//! The smooth random displacement field of the elastic deformation, built on a coarse grid and
//! interpolated, so it costs a fraction of the full-resolution Gaussian blur Simard's recipe uses.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::blur::gaussian_kernel;

/// Grid nodes per sigma. The field is Gaussian-smoothed noise, so it holds almost no detail finer
/// than sigma: with two nodes per sigma, bilinear interpolation between nodes loses little of its
/// spread (1.5 % of the standard deviation at sigma 6, see the tests).
const NODES_PER_SIGMA: f64 = 2.0;

/// Displacements (in pixels) on a grid of nodes `step` pixels apart; node (0, 0) sits on pixel
/// (0, 0) and the last node of each axis at or beyond the last pixel.
pub(super) struct ElasticField {
    step: f32,
    cols: usize,
    dx: Vec<f32>,
    dy: Vec<f32>,
    /// Per grid column: the pixel columns from it up to the next one.
    spans: Vec<std::ops::Range<usize>>,
    /// Per pixel column: the weight of the grid column to its right.
    col_weight: Vec<f32>,
}

impl ElasticField {
    /// The field Simard et al. (and Albumentations, nnU-Net) define, `alpha` × (uniform noise in
    /// ±1 smoothed by a Gaussian of `sigma` px), made on the coarse grid instead: the node noise is
    /// smoothed on the grid, then scaled so each displacement has the standard deviation the
    /// full-resolution recipe gives, `alpha` · Σg² / √3 with g the 1-D kernel of `sigma` px.
    pub fn new(height: usize, width: usize, alpha: f64, sigma: f64, seed: u64) -> Self {
        let step = (sigma / NODES_PER_SIGMA).max(1.0);
        let nodes = |pixels: usize| ((pixels.max(1) - 1) as f64 / step).ceil() as usize + 2;
        let (rows, cols) = (nodes(height), nodes(width));

        let coarse_kernel = gaussian_kernel(sigma / step);
        let fine_kernel = gaussian_kernel(sigma);
        let energy = |k: &[f32]| k.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>();
        // Both smoothings average noise in ±1 with weights summing to one, so the coarse field is
        // bounded by 1 and the scaled one by `gain` ≤ `alpha` (the grid is never finer than 1 px).
        let gain = (alpha * energy(&fine_kernel) / energy(&coarse_kernel)) as f32;

        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dx = smoothed_noise(rows, cols, &coarse_kernel, gain, &mut rng);
        let dy = smoothed_noise(rows, cols, &coarse_kernel, gain, &mut rng);

        let step = step as f32;
        let grid_col = |x: usize| ((x as f32 / step) as usize).min(cols - 2);
        let col_weight = (0..width)
            .map(|x| x as f32 / step - grid_col(x) as f32)
            .collect();
        let mut spans = vec![0..0; cols - 1];
        for x in 0..width {
            let span = &mut spans[grid_col(x)];
            if span.start == span.end {
                *span = x..x;
            }
            span.end = x + 1;
        }
        Self {
            step,
            cols,
            dx,
            dy,
            spans,
            col_weight,
        }
    }

    /// Writes the displacements of pixel row `y` into `dx` and `dy` (each as long as a row), by
    /// bilinear interpolation: first between the two grid rows around `y`, then along the row.
    pub fn row(&self, y: usize, dx: &mut [f32], dy: &mut [f32], scratch: &mut Vec<f32>) {
        let g = y as f32 / self.step;
        let rows = self.dx.len() / self.cols;
        let j = (g as usize).min(rows - 2);
        let t = g - j as f32;
        scratch.clear();
        scratch.resize(2 * self.cols, 0.0);
        let (line_x, line_y) = scratch.split_at_mut(self.cols);
        lerp_rows(&self.dx, self.cols, j, t, line_x);
        lerp_rows(&self.dy, self.cols, j, t, line_y);
        // Cell by cell, so the two grid values are fixed over a run of pixels.
        for (i, span) in self.spans.iter().enumerate() {
            let (x0, x1) = (line_x[i], line_x[i + 1]);
            let (y0, y1) = (line_y[i], line_y[i + 1]);
            let weights = &self.col_weight[span.clone()];
            let out = dx[span.clone()].iter_mut().zip(&mut dy[span.clone()]);
            for ((ox, oy), &w) in out.zip(weights) {
                *ox = x0 + (x1 - x0) * w;
                *oy = y0 + (y1 - y0) * w;
            }
        }
    }
}

fn lerp_rows(grid: &[f32], cols: usize, j: usize, t: f32, out: &mut [f32]) {
    let (a, b) = (
        &grid[j * cols..(j + 1) * cols],
        &grid[(j + 1) * cols..(j + 2) * cols],
    );
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + (b - a) * t;
    }
}

/// `rows` × `cols` values of uniform noise in ±1 convolved with `kernel` along both axes and
/// multiplied by `gain`. The noise covers a margin of one kernel radius around the grid so the
/// field is as random at the image border as in its centre (no border rule shapes it).
fn smoothed_noise(
    rows: usize,
    cols: usize,
    kernel: &[f32],
    gain: f32,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let radius = kernel.len() / 2;
    let (noise_rows, noise_cols) = (rows + 2 * radius, cols + 2 * radius);
    let mut noise = Vec::with_capacity(noise_rows * noise_cols + 1);
    while noise.len() < noise_rows * noise_cols {
        // Two values from each 64-bit draw, 24 bits each, the precision of an f32 in [1, 2).
        let bits = rng.next_u64();
        for half in [bits as u32, (bits >> 32) as u32] {
            noise.push((half >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0);
        }
    }

    let mut across = vec![0.0f32; noise_rows * cols];
    for (src, out) in noise
        .chunks_exact(noise_cols)
        .zip(across.chunks_exact_mut(cols))
    {
        for (k, &w) in kernel.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&src[k..k + cols]) {
                *o += w * v;
            }
        }
    }
    let mut field = vec![0.0f32; rows * cols];
    for (r, out) in field.chunks_exact_mut(cols).enumerate() {
        for (k, &w) in kernel.iter().enumerate() {
            let src = &across[(r + k) * cols..(r + k + 1) * cols];
            for (o, &v) in out.iter_mut().zip(src) {
                *o += w * gain * v;
            }
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(size: usize, alpha: f64, sigma: f64, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let f = ElasticField::new(size, size, alpha, sigma, seed);
        let (mut dx, mut dy) = (vec![0.0; size * size], vec![0.0; size * size]);
        let mut scratch = Vec::new();
        for y in 0..size {
            let row = y * size..(y + 1) * size;
            f.row(y, &mut dx[row.clone()], &mut dy[row], &mut scratch);
        }
        (dx, dy)
    }

    fn energy(sigma: f64) -> f64 {
        gaussian_kernel(sigma)
            .iter()
            .map(|&w| f64::from(w).powi(2))
            .sum()
    }

    #[test]
    fn field_is_bounded_zero_mean_and_has_simards_spread() {
        let (size, alpha, sigma) = (128, 60.0, 6.0);
        // The standard deviation of alpha × (uniform ±1 noise blurred by a Gaussian of sigma px).
        let expected_std = alpha * energy(sigma) / 3f64.sqrt();
        let (mut sum, mut sum_sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for seed in 0..8 {
            let (dx, dy) = field(size, alpha, sigma, seed);
            for &d in dx.iter().chain(&dy) {
                assert!(f64::from(d).abs() <= alpha, "{d} exceeds alpha");
                sum += f64::from(d);
                sum_sq += f64::from(d).powi(2);
                n += 1.0;
            }
        }
        let mean = sum / n;
        let std = (sum_sq / n - mean * mean).sqrt();
        assert!(mean.abs() < 0.1 * expected_std, "mean {mean}, std {std}");
        assert!(
            (std / expected_std - 1.0).abs() < 0.2,
            "std {std}, expected {expected_std}"
        );
    }

    #[test]
    fn field_is_smooth() {
        let (size, alpha, sigma) = (96, 80.0, 8.0);
        let (dx, dy) = field(size, alpha, sigma, 3);
        let std = (dx.iter().map(|&d| f64::from(d).powi(2)).sum::<f64>() / dx.len() as f64).sqrt();
        // Gaussian-smoothed noise has derivatives of about std / (sigma √2); white noise would
        // change by about 1.4 std from one pixel to the next.
        let bound = 5.0 * std / sigma;
        for d in [&dx, &dy] {
            for y in 0..size {
                for x in 0..size {
                    let here = f64::from(d[y * size + x]);
                    if x + 1 < size {
                        assert!((f64::from(d[y * size + x + 1]) - here).abs() <= bound);
                    }
                    if y + 1 < size {
                        assert!((f64::from(d[(y + 1) * size + x]) - here).abs() <= bound);
                    }
                }
            }
        }
        assert!(std > 0.5, "the field should not be flat: std {std}");
    }

    #[test]
    fn seeds_give_different_fields_and_repeat_exactly() {
        assert_eq!(field(32, 30.0, 4.0, 1), field(32, 30.0, 4.0, 1));
        assert_ne!(field(32, 30.0, 4.0, 1), field(32, 30.0, 4.0, 2));
    }
}
