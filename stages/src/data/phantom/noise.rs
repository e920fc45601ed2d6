//! Smooth random fields for the phantoms: value noise, wobbly outlines, a normal sampler.

use super::*;

pub(super) fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

pub(super) fn normal(rng: &mut ChaCha8Rng) -> f32 {
    rng.sample(StandardNormal)
}

/// Pixel centres in normalised coordinates `[-1, 1]` (x right, y down = posterior): every shape is
/// defined once in these units, which is what makes 64 px and 512 px phantoms look alike.
#[derive(Clone, Copy)]
pub(super) struct Grid {
    pub(super) size: usize,
    pub(super) step: f32,
}

impl Grid {
    pub(super) fn new(size: usize) -> Self {
        Self {
            size,
            step: 2.0 / size.max(1) as f32,
        }
    }

    pub(super) fn coord(self, i: usize) -> f32 {
        (i as f32 + 0.5) * self.step - 1.0
    }

    /// Pixel indices whose centres may fall in `[lo, hi]`.
    pub(super) fn range(self, lo: f32, hi: f32) -> std::ops::Range<usize> {
        let to_px = |v: f32| (v + 1.0) / self.step - 0.5;
        let end = (to_px(hi).ceil() + 1.0).clamp(0.0, self.size as f32) as usize;
        let start = (to_px(lo).floor().max(0.0) as usize).min(end);
        start..end
    }
}

/// Smooth random field in `[-1, 1]` from a coarse lattice; cheap enough to sample per pixel.
pub(super) struct ValueNoise {
    pub(super) cells: usize,
    pub(super) values: Vec<f32>,
}

impl ValueNoise {
    pub(super) fn new(rng: &mut ChaCha8Rng, cells: usize) -> Self {
        let values = (0..(cells + 1) * (cells + 1))
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Self { cells, values }
    }

    pub(super) fn at(&self, x: f32, y: f32) -> f32 {
        let max = self.cells as f32 - 1e-3;
        let gx = ((x + 1.0) * 0.5 * self.cells as f32).clamp(0.0, max);
        let gy = ((y + 1.0) * 0.5 * self.cells as f32).clamp(0.0, max);
        let (ix, iy) = (gx as usize, gy as usize);
        let fade = |t: f32| t * t * (3.0 - 2.0 * t);
        let (fx, fy) = (fade(gx - ix as f32), fade(gy - iy as f32));
        let n = self.cells + 1;
        let v = |dx: usize, dy: usize| {
            self.values
                .get((iy + dy) * n + ix + dx)
                .copied()
                .unwrap_or(0.0)
        };
        let top = v(0, 0) + (v(1, 0) - v(0, 0)) * fx;
        let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * fx;
        top + (bottom - top) * fy
    }
}

/// Low-order Fourier wobble of a contour's radius, evaluated from the unit direction by complex
/// powers instead of trigonometry, since it runs for every pixel.
pub(super) struct Wobble {
    pub(super) coeffs: [(f32, f32); 4],
}

impl Wobble {
    pub(super) fn new(rng: &mut ChaCha8Rng, amplitude: f32) -> Self {
        let mut coeffs = [(0.0, 0.0); 4];
        for c in &mut coeffs {
            *c = (
                rng.random_range(-amplitude..amplitude),
                rng.random_range(-amplitude..amplitude),
            );
        }
        Self { coeffs }
    }

    /// Sum over k = 2..=5 of the k-th harmonic.
    pub(super) fn at(&self, dx: f32, dy: f32) -> f32 {
        let (mut zr, mut zi) = (dx, dy);
        let mut sum = 0.0;
        for &(a, b) in &self.coeffs {
            (zr, zi) = (zr * dx - zi * dy, zr * dy + zi * dx);
            sum += a * zr + b * zi;
        }
        sum
    }
}
