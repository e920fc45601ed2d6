//! Synthetic axial lung CT slices ("phantoms") with lesion masks in the Kaggle format: the built-in
//! demo and test data, deterministic per (seed, slice index) so every run reproduces byte for byte.

use ndarray::{Array2, Array3, Array4};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Progress, Result};

const MIN_SIZE: usize = 64;
const MAX_SIZE: usize = 512;
const MAX_SLICES: usize = 100_000;

// Mask channels, in the order of the Kaggle `masks_medseg.npy` files.
const GGO: u8 = 0;
const CONSOLIDATION: u8 = 1;
const OTHER_LUNG: u8 = 2;
const BACKGROUND: u8 = 3;
const CHANNELS: usize = 4;

// What a pixel is before lesions are added; overlays (bones, heart) only ever paint `BODY`, so the
// lung masks stay exactly the lung shapes whatever overlaps them.
const OUTSIDE: u8 = 0;
const BODY: u8 = 1;
const LUNG: u8 = 2;

// The usual CT storage range; noise must not push air below what a scanner can write.
const MIN_HU: f32 = -1024.0;
const MAX_HU: f32 = 3071.0;
const AIR_HU: f32 = -1000.0;
const VESSEL_HU: f32 = 40.0;

/// Lowest lesion threshold on the summed blob field: below it a patch would grow out to the
/// square bounding boxes the blobs are evaluated in.
const LESION_FLOOR: f32 = 0.25;

/// How the phantom data set is made; `[params]` of the phantom stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomConfig {
    /// Number of slices.
    pub slices: usize,
    /// Width and height of a slice in pixels.
    pub size: usize,
    /// Share of slices drawn without any lesion, as in real data where many slices are clean.
    pub lesion_free_fraction: f64,
    /// Standard deviation of the additive Gaussian noise, in HU.
    pub noise_hu: f64,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            slices: 16,
            size: 128,
            lesion_free_fraction: 0.15,
            noise_hu: 20.0,
        }
    }
}

impl PhantomConfig {
    /// Rejects sizes and values the generator cannot honour, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(Error::invalid_param(
                "size",
                format!("expected {MIN_SIZE}…{MAX_SIZE}, got {}", self.size),
            ));
        }
        if self.slices == 0 || self.slices > MAX_SLICES {
            return Err(Error::invalid_param(
                "slices",
                format!("expected 1…{MAX_SLICES}, got {}", self.slices),
            ));
        }
        if !(0.0..=1.0).contains(&self.lesion_free_fraction) {
            return Err(Error::invalid_param(
                "lesion_free_fraction",
                format!(
                    "expected a fraction in 0…1, got {}",
                    self.lesion_free_fraction
                ),
            ));
        }
        if !(self.noise_hu.is_finite() && self.noise_hu >= 0.0) {
            return Err(Error::invalid_param(
                "noise_hu",
                format!("expected a finite number ≥ 0, got {}", self.noise_hu),
            ));
        }
        Ok(())
    }
}

/// A phantom data set in the Kaggle layout.
#[derive(Debug, Clone)]
pub struct PhantomSet {
    /// `(N, S, S, 1)`, Hounsfield units.
    pub images: Array4<f64>,
    /// `(N, S, S, 4)`: ground glass, consolidation, other lung, background; one-hot per pixel.
    pub masks: Array4<bool>,
}

/// Generates `config.slices` phantoms in parallel; slice `i` equals `generate_slice(config, seed, i)`.
pub fn generate(config: &PhantomConfig, seed: u64, progress: &dyn Progress) -> Result<PhantomSet> {
    config.validate()?;
    let (n, s) = (config.slices, config.size);
    let pixels = s * s;
    let too_large = || {
        Error::invalid_param(
            "slices",
            format!("{n} slices of {s}×{s} do not fit in memory"),
        )
    };
    let total = n.checked_mul(pixels).ok_or_else(too_large)?;
    let total_mask = total.checked_mul(CHANNELS).ok_or_else(too_large)?;

    progress.start(n as u64, "slices");
    // Each slice renders straight into its part of the output, so peak memory stays one data set.
    let mut images = vec![0.0f64; total];
    let mut masks = vec![false; total_mask];
    images
        .par_chunks_mut(pixels)
        .zip(masks.par_chunks_mut(pixels * CHANNELS))
        .enumerate()
        .for_each(|(index, (image, mask))| {
            render(config, seed, index).write_into(image, mask);
            progress.advance(1);
        });

    let shape_error = |e: ndarray::ShapeError| Error::invalid_param("slices", e.to_string());
    Ok(PhantomSet {
        images: Array4::from_shape_vec((n, s, s, 1), images).map_err(shape_error)?,
        masks: Array4::from_shape_vec((n, s, s, CHANNELS), masks).map_err(shape_error)?,
    })
}

/// One phantom: the image `(S, S)` in HU and its one-hot mask `(S, S, 4)`.
pub fn generate_slice(
    config: &PhantomConfig,
    seed: u64,
    index: usize,
) -> (Array2<f64>, Array3<bool>) {
    let s = config.size;
    let slice = render(config, seed, index);
    let image = Array2::from_shape_fn((s, s), |(r, c)| f64::from(slice.hu[r * s + c]));
    let mask = Array3::from_shape_fn((s, s, CHANNELS), |(r, c, k)| {
        usize::from(slice.class[r * s + c]) == k
    });
    (image, mask)
}

/// Seeds every slice independently, so output does not depend on which thread renders which slice.
fn slice_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // One splitmix64 step so neighbouring (seed, index) pairs give unrelated streams.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

struct SliceBuf {
    hu: Vec<f32>,
    class: Vec<u8>,
}

impl SliceBuf {
    fn write_into(&self, image: &mut [f64], mask: &mut [bool]) {
        for (dst, &hu) in image.iter_mut().zip(&self.hu) {
            *dst = f64::from(hu);
        }
        for (pixel, &class) in mask.chunks_exact_mut(CHANNELS).zip(&self.class) {
            for (k, dst) in pixel.iter_mut().enumerate() {
                *dst = usize::from(class) == k;
            }
        }
    }
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    rng.sample(StandardNormal)
}

/// Pixel centres in normalised coordinates `[-1, 1]` (x right, y down = posterior): every shape is
/// defined once in these units, which is what makes 64 px and 512 px phantoms look alike.
#[derive(Clone, Copy)]
struct Grid {
    size: usize,
    step: f32,
}

impl Grid {
    fn new(size: usize) -> Self {
        Self {
            size,
            step: 2.0 / size.max(1) as f32,
        }
    }

    fn coord(self, i: usize) -> f32 {
        (i as f32 + 0.5) * self.step - 1.0
    }

    /// Pixel indices whose centres may fall in `[lo, hi]`.
    fn range(self, lo: f32, hi: f32) -> std::ops::Range<usize> {
        let to_px = |v: f32| (v + 1.0) / self.step - 0.5;
        let end = (to_px(hi).ceil() + 1.0).clamp(0.0, self.size as f32) as usize;
        let start = (to_px(lo).floor().max(0.0) as usize).min(end);
        start..end
    }
}

/// Smooth random field in `[-1, 1]` from a coarse lattice; cheap enough to sample per pixel.
struct ValueNoise {
    cells: usize,
    values: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut ChaCha8Rng, cells: usize) -> Self {
        let values = (0..(cells + 1) * (cells + 1))
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Self { cells, values }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
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
struct Wobble {
    coeffs: [(f32, f32); 4],
}

impl Wobble {
    fn new(rng: &mut ChaCha8Rng, amplitude: f32) -> Self {
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
    fn at(&self, dx: f32, dy: f32) -> f32 {
        let (mut zr, mut zi) = (dx, dy);
        let mut sum = 0.0;
        for &(a, b) in &self.coeffs {
            (zr, zi) = (zr * dx - zi * dy, zr * dy + zi * dx);
            sum += a * zr + b * zi;
        }
        sum
    }
}

struct Body {
    cx: f32,
    cy: f32,
    ax: f32,
    ay: f32,
    wobble: Wobble,
    /// Subcutaneous fat and skin thickness as fractions of the contour radius.
    fat: f32,
    skin: f32,
}

impl Body {
    /// Below 1 inside; the back is squarer than the front because patients lie on the table.
    fn level(&self, x: f32, y: f32) -> f32 {
        let (u, v) = ((x - self.cx) / self.ax, (y - self.cy) / self.ay);
        let r2 = u * u + v * v;
        if r2 < 1e-12 {
            return 0.0;
        }
        let r = r2.sqrt();
        let rho = if v > 0.0 {
            0.5 * r + 0.5 * (u * u * u * u + v * v * v * v).sqrt().sqrt()
        } else {
            r
        };
        rho / (1.0 + self.wobble.at(u / r, v / r))
    }

    /// The y of the skin straight above (`dir` −1) or below (`dir` +1) the centre.
    fn midline_edge(&self, dir: f32) -> f32 {
        self.cy + dir * self.ay * (1.0 + self.wobble.at(0.0, dir))
    }
}

struct Lung {
    cx: f32,
    cy: f32,
    ax: f32,
    ay: f32,
    /// −1 for the lung on the image left, so local +x always points to the ribs.
    lateral: f32,
    wobble: Wobble,
    /// The kidney shape: a dent towards the mediastinum (deep on the heart side).
    notch_dir: (f32, f32),
    notch_depth: f32,
    notch_kappa: f32,
    /// Where the lung reaches down beside the spine (the paravertebral gutter).
    bulge_dir: (f32, f32),
    bulge_depth: f32,
}

impl Lung {
    fn radius(&self, dx: f32, dy: f32) -> f32 {
        let along = dx * self.notch_dir.0 + dy * self.notch_dir.1;
        let notch = self.notch_depth * (self.notch_kappa * (along - 1.0)).exp();
        let along = dx * self.bulge_dir.0 + dy * self.bulge_dir.1;
        let bulge = self.bulge_depth * (3.0 * (along - 1.0)).exp();
        1.0 + self.wobble.at(dx, dy) - notch + bulge
    }

    /// Below 1 inside.
    fn level(&self, x: f32, y: f32) -> f32 {
        let u = (x - self.cx) * self.lateral / self.ax;
        let v = (y - self.cy) / self.ay;
        let rho = (u * u + v * v).sqrt();
        if rho < 1e-6 {
            return 0.0;
        }
        rho / self.radius(u / rho, v / rho)
    }

    fn bounds(&self) -> (f32, f32, f32, f32) {
        let (ex, ey) = (self.ax * 1.1, self.ay * 1.1);
        (self.cx - ex, self.cx + ex, self.cy - ey, self.cy + ey)
    }

    /// The pleura in direction `angle` (0 lateral, +π/2 posterior), found in closed form because
    /// the level is linear along a ray from the centre.
    fn boundary(&self, angle: f32) -> (f32, f32) {
        let (dx, dy) = (angle.cos(), angle.sin());
        let r = self.radius(dx, dy);
        (
            self.cx + self.lateral * self.ax * r * dx,
            self.cy + self.ay * r * dy,
        )
    }

    /// Outward unit normal of the level set through (x, y).
    fn normal(&self, x: f32, y: f32) -> (f32, f32) {
        let h = 1e-3;
        let gx = self.level(x + h, y) - self.level(x - h, y);
        let gy = self.level(x, y + h) - self.level(x, y - h);
        let n = (gx * gx + gy * gy).sqrt();
        if n > 0.0 {
            (gx / n, gy / n)
        } else {
            (self.lateral, 0.0)
        }
    }

    fn parenchyma(&self, hu: f32, x: f32, y: f32, fine: &ValueNoise, coarse: &ValueNoise) -> f32 {
        // Dependent lung is a little denser (gravity), a hallmark of supine CT.
        let t = ((y - (self.cy - self.ay)) / (2.0 * self.ay)).clamp(0.0, 1.0);
        hu + 14.0 * fine.at(x, y) + 10.0 * coarse.at(x, y) + 30.0 * t * t
    }
}

/// A rotated ellipse; `q` is 1 on its outline.
struct Ellipse {
    cx: f32,
    cy: f32,
    a: f32,
    b: f32,
    /// Unit vector of the `a` axis.
    axis: (f32, f32),
}

impl Ellipse {
    fn new(cx: f32, cy: f32, a: f32, b: f32, angle: f32) -> Self {
        Self {
            cx,
            cy,
            a,
            b,
            axis: (angle.cos(), angle.sin()),
        }
    }

    fn circle(cx: f32, cy: f32, r: f32) -> Self {
        Self::new(cx, cy, r, r, 0.0)
    }

    fn q(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.axis.0 + dy * self.axis.1) / self.a;
        let v = (-dx * self.axis.1 + dy * self.axis.0) / self.b;
        (u * u + v * v).sqrt()
    }
}

enum Fill {
    Soft {
        hu: f32,
    },
    /// A dense cortex around a lighter marrow core, so the shape reads as bone, not metal.
    Bone {
        core: f32,
        cortex: f32,
        cortex_from: f32,
    },
}

/// Non-lung anatomy painted over the body in order.
struct Overlay {
    shape: Ellipse,
    fill: Fill,
    /// Paints only posterior to this y (the half ring of a vertebral arch).
    min_y: f32,
}

impl Overlay {
    fn new(shape: Ellipse, fill: Fill) -> Self {
        Self {
            shape,
            fill,
            min_y: f32::NEG_INFINITY,
        }
    }
}

struct Segment {
    a: (f32, f32),
    b: (f32, f32),
    r0: f32,
    r1: f32,
}

struct Blob {
    x: f32,
    y: f32,
    sigma: f32,
    amp: f32,
}

struct Anatomy {
    body: Body,
    lungs: [Lung; 2],
    parenchyma_hu: f32,
    overlays: Vec<Overlay>,
}

fn random_anatomy(rng: &mut ChaCha8Rng) -> Anatomy {
    let body = Body {
        cx: rng.random_range(-0.02f32..0.02),
        cy: rng.random_range(0.01f32..0.05),
        ax: rng.random_range(0.87f32..0.93),
        ay: rng.random_range(0.62f32..0.70),
        wobble: Wobble::new(rng, 0.01),
        fat: rng.random_range(0.03f32..0.07),
        skin: 0.012,
    };
    let lung = |rng: &mut ChaCha8Rng, lateral: f32| {
        // The heart sits left of the midline (image right), so that lung has the deeper notch.
        let heart_side = lateral > 0.0;
        let notch_depth = if heart_side {
            rng.random_range(0.20f32..0.30)
        } else {
            rng.random_range(0.10f32..0.18)
        };
        let forward = rng.random_range(0.1f32..0.6);
        let n = (1.0 + forward * forward).sqrt();
        let inward = rng.random_range(0.2f32..0.5);
        let m = (1.0 + inward * inward).sqrt();
        Lung {
            cx: body.cx + lateral * rng.random_range(0.37f32..0.41),
            cy: body.cy + rng.random_range(-0.07f32..-0.01),
            ax: rng.random_range(0.27f32..0.31),
            ay: rng.random_range(0.39f32..0.45),
            lateral,
            wobble: Wobble::new(rng, 0.01),
            notch_dir: (-1.0 / n, -forward / n),
            notch_depth,
            notch_kappa: rng.random_range(2.0f32..4.0),
            bulge_dir: (-inward / m, 1.0 / m),
            bulge_depth: rng.random_range(0.03f32..0.09),
        }
    };
    let lungs = [lung(rng, -1.0), lung(rng, 1.0)];
    let parenchyma_hu = rng.random_range(-865.0f32..-835.0);

    let mut overlays = Vec::new();
    let soft = |hu| Fill::Soft { hu };
    let (bx, by) = (body.cx, body.cy);
    // The heart fills the space between the lungs, which clip it to their notches; a thin fat
    // rim shows where the pericardium is.
    let (hx, hy) = (
        bx + rng.random_range(0.04f32..0.08),
        by - rng.random_range(0.06f32..0.12),
    );
    let (ha, hb) = (
        rng.random_range(0.24f32..0.28),
        rng.random_range(0.17f32..0.2),
    );
    let tilt = rng.random_range(-0.85f32..-0.55);
    let rim = rng.random_range(0.015f32..0.03);
    overlays.push(Overlay::new(
        Ellipse::new(hx, hy, ha + rim, hb + rim, tilt),
        soft(-95.0),
    ));
    overlays.push(Overlay::new(Ellipse::new(hx, hy, ha, hb, tilt), soft(40.0)));

    let back = body.midline_edge(1.0);
    let vy = back - 0.34 - body.ay * body.fat + rng.random_range(-0.02f32..0.02);
    let canal_y = vy + 0.117;
    // Posterior mediastinum: descending aorta and oesophagus in a little fat, in front of the spine.
    overlays.push(Overlay::new(
        Ellipse::new(bx + 0.07, vy - 0.11, 0.1, 0.065, 0.3),
        soft(-90.0),
    ));
    overlays.push(Overlay::new(
        Ellipse::circle(bx + 0.11, vy - 0.1, 0.048),
        soft(45.0),
    ));
    overlays.push(Overlay::new(
        Ellipse::circle(bx + 0.03, vy - 0.125, 0.022),
        soft(35.0),
    ));
    overlays.push(Overlay::new(
        Ellipse::new(bx, vy, 0.085, 0.075, 0.0),
        Fill::Bone {
            core: 230.0,
            cortex: 750.0,
            cortex_from: 0.72,
        },
    ));
    for side in [-1.0f32, 1.0] {
        overlays.push(Overlay::new(
            Ellipse::new(bx + side * 0.075, canal_y - 0.005, 0.05, 0.016, side * 0.35),
            Fill::Bone {
                core: 450.0,
                cortex: 700.0,
                cortex_from: 0.5,
            },
        ));
    }
    overlays.push(Overlay {
        shape: Ellipse::circle(bx, canal_y, 0.062),
        fill: Fill::Bone {
            core: 550.0,
            cortex: 750.0,
            cortex_from: 0.5,
        },
        min_y: canal_y - 0.027,
    });
    overlays.push(Overlay::new(
        Ellipse::circle(bx, canal_y, 0.034),
        soft(25.0),
    ));
    overlays.push(Overlay::new(
        Ellipse::new(bx, canal_y + 0.105, 0.016, 0.05, 0.0),
        Fill::Bone {
            core: 500.0,
            cortex: 750.0,
            cortex_from: 0.5,
        },
    ));

    let front = body.midline_edge(-1.0);
    overlays.push(Overlay::new(
        Ellipse::new(
            bx,
            front + body.ay * body.fat * 1.4 + 0.035,
            0.06,
            0.022,
            0.0,
        ),
        Fill::Bone {
            core: 250.0,
            cortex: 650.0,
            cortex_from: 0.6,
        },
    ));

    // Ribs hug the pleura from anterolateral round to posterior, so place them on the lung outline.
    for lung in &lungs {
        let count = rng.random_range(5usize..=7);
        let span = 3.2 / count as f32;
        for i in 0..count {
            let angle = -1.1 + (i as f32 + rng.random_range(0.2f32..0.8)) * span;
            let (px, py) = lung.boundary(angle);
            let (nx, ny) = lung.normal(px, py);
            let (a, b) = (
                rng.random_range(0.035f32..0.055),
                rng.random_range(0.014f32..0.02),
            );
            let gap = b + rng.random_range(0.006f32..0.015);
            let (cx, cy) = (px + nx * gap, py + ny * gap);
            if body.level(cx + nx * b, cy + ny * b) > 1.0 - 0.5 * body.fat {
                continue;
            }
            overlays.push(Overlay::new(
                Ellipse::new(cx, cy, a, b, (-ny).atan2(-nx) + std::f32::consts::FRAC_PI_2),
                Fill::Bone {
                    core: 350.0,
                    cortex: 900.0,
                    cortex_from: 0.55,
                },
            ));
        }
    }
    Anatomy {
        body,
        lungs,
        parenchyma_hu,
        overlays,
    }
}

/// Rotates a unit vector by `angle` radians.
fn rotate((x, y): (f32, f32), angle: f32) -> (f32, f32) {
    let (s, c) = angle.sin_cos();
    (x * c - y * s, x * s + y * c)
}

/// One branch still to grow: start, unit direction, length, radius, generation.
type Sprout = ((f32, f32), (f32, f32), f32, f32, u32);

/// Tapering, sometimes forking vessel segments; a branch stops at the pleura or after a few
/// generations, because an axial slice only cuts short stretches of the in-plane vessels.
fn grow_vessels(rng: &mut ChaCha8Rng, lung: &Lung, root: Sprout, out: &mut Vec<Segment>) {
    let mut stack = vec![root];
    while let Some((start, dir, len, r, depth)) = stack.pop() {
        let dir = rotate(dir, rng.random_range(-0.25f32..0.25));
        let end = (start.0 + dir.0 * len, start.1 + dir.1 * len);
        let r1 = r * 0.8;
        out.push(Segment {
            a: start,
            b: end,
            r0: r,
            r1,
        });
        if depth >= 3 || r1 < 0.0025 || lung.level(end.0, end.1) > 0.9 {
            continue;
        }
        let forks = if rng.random::<f32>() < 0.55 { 2 } else { 1 };
        let spread = if forks == 2 { 1.0 } else { 0.3 };
        for side in [-1.0f32, 1.0].into_iter().take(forks) {
            let child = rotate(dir, side * spread * rng.random_range(0.25f32..0.55));
            let len = len * rng.random_range(0.6f32..0.85);
            let r = r1 * rng.random_range(0.7f32..0.9);
            stack.push((end, child, len, r, depth + 1));
        }
    }
}

fn random_vessels(rng: &mut ChaCha8Rng, lungs: &[Lung; 2]) -> Vec<Segment> {
    let mut segments = Vec::new();
    for lung in lungs {
        let hilum = (
            lung.cx - lung.lateral * lung.ax * rng.random_range(0.45f32..0.6),
            lung.cy + lung.ay * rng.random_range(-0.15f32..0.15),
        );
        for _ in 0..rng.random_range(2usize..=3) {
            let angle = rng.random_range(-1.3f32..1.5);
            let start = (
                hilum.0 + rng.random_range(-0.03f32..0.03),
                hilum.1 + rng.random_range(-0.06f32..0.06),
            );
            let dir = (lung.lateral * angle.cos(), angle.sin());
            let len = rng.random_range(0.07f32..0.12);
            let r = rng.random_range(0.008f32..0.013);
            grow_vessels(rng, lung, (start, dir, len, r, 0), &mut segments);
        }
        // Elsewhere vessels run obliquely through the slice: short twigs, and dots where they
        // cross it; both are larger towards the hilum.
        let (x0, x1, y0, y1) = lung.bounds();
        let twigs = rng.random_range(6usize..=12);
        for n in 0..twigs + rng.random_range(20usize..=35) {
            for _ in 0..50 {
                let (x, y) = (rng.random_range(x0..x1), rng.random_range(y0..y1));
                let level = lung.level(x, y);
                if level >= 0.9 {
                    continue;
                }
                let r = 0.003 + 0.008 * (1.0 - level) * rng.random_range(0.5f32..1.0);
                if n < twigs {
                    // Twigs point away from the hilum like the trees they belong to.
                    let (dx, dy) = (x - hilum.0, y - hilum.1);
                    let d = (dx * dx + dy * dy).sqrt().max(1e-6);
                    let dir = rotate((dx / d, dy / d), rng.random_range(-0.5f32..0.5));
                    let len = rng.random_range(0.02f32..0.05);
                    grow_vessels(rng, lung, ((x, y), dir, len, r, 2), &mut segments);
                } else {
                    segments.push(Segment {
                        a: (x, y),
                        b: (x, y),
                        r0: r,
                        r1: r,
                    });
                }
                break;
            }
        }
    }
    segments
}

/// Lung area in normalised units on a fixed lattice, so the lesion plan (and so every random draw
/// before the pixel noise) is the same at every image size.
fn lung_area(lungs: &[Lung; 2]) -> f32 {
    let grid = Grid::new(128);
    let mut count = 0usize;
    for lung in lungs {
        let (x0, x1, y0, y1) = lung.bounds();
        for r in grid.range(y0, y1) {
            for c in grid.range(x0, x1) {
                if lung.level(grid.coord(c), grid.coord(r)) < 1.0 {
                    count += 1;
                }
            }
        }
    }
    count as f32 * grid.step * grid.step
}

struct LesionPlan {
    /// Share of lung pixels with any lesion, and with consolidation.
    total: f32,
    consolidation: f32,
    ggo: Vec<Blob>,
    cons: Vec<Blob>,
}

fn random_lesions(
    rng: &mut ChaCha8Rng,
    lungs: &[Lung; 2],
    lesion_free_fraction: f64,
) -> Option<LesionPlan> {
    if rng.random::<f64>() < lesion_free_fraction {
        return None;
    }
    // Mostly small involvement, up to a third of the lung when both lungs are affected, as in the
    // Kaggle slices; one lung alone is rarely more than half filled.
    let bilateral = rng.random::<f32>() < 0.75;
    let spread = if bilateral { 0.30 } else { 0.13 };
    let total = 0.03 + spread * rng.random::<f32>().powf(1.6);
    let share = if rng.random::<f32>() < 0.3 {
        0.0
    } else {
        rng.random_range(0.08f32..0.4)
    };
    let consolidation = total * share;
    let area = lung_area(lungs);

    let involved: Vec<&Lung> = if bilateral {
        lungs.iter().collect()
    } else {
        vec![&lungs[rng.random_range(0usize..2)]]
    };
    // COVID-19 pneumonia is peripheral and posterior: clusters sit under the lateral and dorsal pleura.
    let mut clusters = Vec::new();
    for lung in &involved {
        for _ in 0..rng.random_range(1usize..=4) {
            let angle = (0.5 + 0.9 * normal(rng)).clamp(-1.6, 2.4);
            clusters.push((*lung, angle));
        }
    }

    // Blobs are added until their rough area (about 3σ² each once clipped by the pleura) exceeds
    // the plan; the threshold chosen later trims the excess.
    let size = 1.0 + total;
    let mut ggo = Vec::new();
    let mut covered = 0.0;
    while covered < 1.5 * total * area && ggo.len() < 120 {
        let (lung, angle) = clusters[rng.random_range(0..clusters.len())];
        let (px, py) = lung.boundary(angle + 0.35 * normal(rng));
        let (nx, ny) = lung.normal(px, py);
        let sigma = rng.random_range(0.025f32..0.055) * size;
        let depth = if rng.random::<f32>() < 0.15 {
            rng.random_range(0.1f32..0.2)
        } else {
            0.01 + 0.04 * normal(rng).abs() + 0.3 * sigma
        };
        ggo.push(Blob {
            x: px - nx * depth,
            y: py - ny * depth,
            sigma,
            amp: rng.random_range(0.6f32..1.0),
        });
        covered += 3.0 * sigma * sigma;
    }
    // Consolidation grows inside ground glass, so it reuses the ground-glass centres.
    let mut cons = Vec::new();
    let mut covered = 0.0;
    while consolidation > 0.0 && covered < 1.5 * consolidation * area && cons.len() < 60 {
        let Some(parent) = ggo.get(rng.random_range(0..ggo.len().max(1))) else {
            break;
        };
        let sigma = parent.sigma * rng.random_range(0.4f32..0.65);
        cons.push(Blob {
            x: parent.x + 0.3 * parent.sigma * normal(rng),
            y: parent.y + 0.3 * parent.sigma * normal(rng),
            sigma,
            amp: rng.random_range(0.7f32..1.0),
        });
        covered += 3.0 * sigma * sigma;
    }
    Some(LesionPlan {
        total,
        consolidation,
        ggo,
        cons,
    })
}

/// Value above which `count` of `values` lie; floored so a patch never grows to its bounding boxes.
fn threshold_for(values: &mut [f32], count: usize) -> f32 {
    if count == 0 || values.is_empty() {
        return f32::INFINITY;
    }
    let k = values.len() - count.min(values.len());
    let (_, t, _) = values.select_nth_unstable_by(k, f32::total_cmp);
    t.max(LESION_FLOOR)
}

fn add_blobs(field: &mut [f32], kind: &[u8], grid: Grid, blobs: &[Blob]) {
    let s = grid.size;
    for blob in blobs {
        let reach = 3.0 * blob.sigma;
        let inv = -0.5 / (blob.sigma * blob.sigma);
        for r in grid.range(blob.y - reach, blob.y + reach) {
            let dy = grid.coord(r) - blob.y;
            for c in grid.range(blob.x - reach, blob.x + reach) {
                let i = r * s + c;
                if kind[i] == LUNG {
                    let dx = grid.coord(c) - blob.x;
                    field[i] += blob.amp * ((dx * dx + dy * dy) * inv).exp();
                }
            }
        }
    }
}

fn render(config: &PhantomConfig, seed: u64, index: usize) -> SliceBuf {
    let s = config.size;
    let grid = Grid::new(s);
    let pixels = s * s;
    let mut rng = slice_rng(seed, index);

    // All geometry is drawn before anything that depends on the size, so one (seed, index) gives
    // the same patient at every resolution.
    let anatomy = random_anatomy(&mut rng);
    let tissue_tex = ValueNoise::new(&mut rng, 24);
    let lung_fine = ValueNoise::new(&mut rng, 32);
    let lung_coarse = ValueNoise::new(&mut rng, 6);
    let patchiness = ValueNoise::new(&mut rng, 14);
    let lesion_tex = ValueNoise::new(&mut rng, 20);
    let vessels = random_vessels(&mut rng, &anatomy.lungs);
    let lesions = random_lesions(&mut rng, &anatomy.lungs, config.lesion_free_fraction);

    let mut hu = vec![AIR_HU; pixels];
    let mut kind = vec![OUTSIDE; pixels];
    let body = &anatomy.body;
    let bounds = anatomy.lungs.each_ref().map(Lung::bounds);
    for r in 0..s {
        let y = grid.coord(r);
        for c in 0..s {
            let x = grid.coord(c);
            let level = body.level(x, y);
            if level >= 1.0 {
                continue;
            }
            let i = r * s + c;
            let lung = anatomy
                .lungs
                .iter()
                .zip(&bounds)
                .find(|&(lung, &(x0, x1, y0, y1))| {
                    x >= x0 && x <= x1 && y >= y0 && y <= y1 && lung.level(x, y) < 1.0
                });
            if let Some((lung, _)) = lung {
                kind[i] = LUNG;
                hu[i] = lung.parenchyma(anatomy.parenchyma_hu, x, y, &lung_fine, &lung_coarse);
                continue;
            }
            kind[i] = BODY;
            let tex = tissue_tex.at(x, y);
            // Swapped coordinates read the coarse lattice as an unrelated field, so the fat
            // thickness varies without a lattice of its own.
            let fat = body.fat * (0.7 + 0.3 * (1.0 + lung_coarse.at(y, x)));
            hu[i] = if level > 1.0 - body.skin {
                30.0 + 5.0 * tex
            } else if level > 1.0 - body.skin - fat {
                -100.0 + 8.0 * tex
            } else {
                45.0 + 6.0 * tex
            };
        }
    }

    for overlay in &anatomy.overlays {
        let e = &overlay.shape;
        let reach = e.a.max(e.b);
        // Partial-volume edge one pixel wide, so small bones do not look like aliased stamps.
        let edge = e.a.min(e.b) / grid.step;
        for r in grid.range(e.cy - reach, e.cy + reach) {
            let y = grid.coord(r);
            if y < overlay.min_y {
                continue;
            }
            for c in grid.range(e.cx - reach, e.cx + reach) {
                let i = r * s + c;
                if kind[i] != BODY {
                    continue;
                }
                let x = grid.coord(c);
                let q = e.q(x, y);
                let alpha = ((1.0 - q) * edge + 0.5).clamp(0.0, 1.0);
                if alpha <= 0.0 {
                    continue;
                }
                let value = match overlay.fill {
                    Fill::Soft { hu } => hu + 6.0 * tissue_tex.at(x, y),
                    Fill::Bone {
                        core,
                        cortex,
                        cortex_from,
                    } => {
                        core + (cortex - core) * smoothstep(cortex_from, cortex_from + 0.3, q)
                            + 25.0 * lung_fine.at(x, y)
                    }
                };
                hu[i] += (value - hu[i]) * alpha;
            }
        }
    }

    let mut vessel = vec![0.0f32; pixels];
    for seg in &vessels {
        let reach = seg.r0.max(seg.r1) + grid.step;
        let (x0, x1) = (seg.a.0.min(seg.b.0) - reach, seg.a.0.max(seg.b.0) + reach);
        let (y0, y1) = (seg.a.1.min(seg.b.1) - reach, seg.a.1.max(seg.b.1) + reach);
        let (ux, uy) = (seg.b.0 - seg.a.0, seg.b.1 - seg.a.1);
        let len2 = ux * ux + uy * uy;
        for r in grid.range(y0, y1) {
            let y = grid.coord(r);
            for c in grid.range(x0, x1) {
                let i = r * s + c;
                if kind[i] != LUNG {
                    continue;
                }
                let (px, py) = (grid.coord(c) - seg.a.0, y - seg.a.1);
                let t = if len2 > 0.0 {
                    ((px * ux + py * uy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (dx, dy) = (px - t * ux, py - t * uy);
                let radius = seg.r0 + (seg.r1 - seg.r0) * t;
                // Coverage of a pixel by the vessel: thin vessels fade instead of vanishing.
                let cover = ((radius - (dx * dx + dy * dy).sqrt()) / grid.step + 0.5)
                    .clamp(0.0, 1.0)
                    * (2.0 * radius / grid.step).min(1.0);
                vessel[i] = vessel[i].max(cover);
            }
        }
    }

    let mut class: Vec<u8> = kind
        .iter()
        .map(|&k| if k == LUNG { OTHER_LUNG } else { BACKGROUND })
        .collect();
    let lung_pixels: Vec<usize> = (0..pixels).filter(|&i| kind[i] == LUNG).collect();
    let mut ggo = Vec::new();
    let mut cons = Vec::new();
    let (mut t_ggo, mut t_cons) = (f32::INFINITY, f32::INFINITY);
    if let Some(plan) = &lesions {
        ggo = vec![0.0f32; pixels];
        cons = vec![0.0f32; pixels];
        add_blobs(&mut ggo, &kind, grid, &plan.ggo);
        add_blobs(&mut cons, &kind, grid, &plan.cons);
        // Modulating the smooth sum by a second field makes the patches irregular and patchy.
        for &i in &lung_pixels {
            let (x, y) = (grid.coord(i % s), grid.coord(i / s));
            ggo[i] *= 1.0 + 0.6 * patchiness.at(x, y);
            cons[i] *= 1.0 + 0.5 * patchiness.at(y, x);
        }
        let n = lung_pixels.len() as f32;
        let mut values: Vec<f32> = lung_pixels.iter().map(|&i| cons[i]).collect();
        t_cons = threshold_for(&mut values, (plan.consolidation * n).round() as usize);
        let consolidated = lung_pixels.iter().filter(|&&i| cons[i] >= t_cons).count();
        values.clear();
        values.extend(
            lung_pixels
                .iter()
                .filter(|&&i| cons[i] < t_cons)
                .map(|&i| ggo[i]),
        );
        let wanted = ((plan.total * n).round() as usize).saturating_sub(consolidated);
        t_ggo = threshold_for(&mut values, wanted);
    }

    for &i in &lung_pixels {
        let (x, y) = (grid.coord(i % s), grid.coord(i / s));
        let mut value = hu[i];
        if lesions.is_some() {
            let (g, k) = (ggo[i], cons[i]);
            if k >= t_cons {
                class[i] = CONSOLIDATION;
            } else if g >= t_ggo {
                class[i] = GGO;
            }
            if class[i] == GGO {
                value =
                    -680.0 + 300.0 * smoothstep(t_ggo, 2.2 * t_ggo, g) + 45.0 * lesion_tex.at(x, y);
            } else if t_ggo.is_finite() {
                // A faint halo: ground glass fades into normal lung rather than stopping at a wall.
                value += (-720.0 - value) * 0.5 * smoothstep(0.6 * t_ggo, t_ggo, g);
            }
        }
        value += (VESSEL_HU - value) * vessel[i];
        if class[i] == CONSOLIDATION {
            let k = cons[i];
            value =
                -90.0 + 110.0 * smoothstep(t_cons, 1.8 * t_cons, k) + 20.0 * lesion_tex.at(y, x);
        }
        hu[i] = value;
    }

    let sigma = if config.noise_hu.is_finite() {
        config.noise_hu.max(0.0) as f32
    } else {
        0.0
    };
    for value in &mut hu {
        *value = (*value + sigma * normal(&mut rng)).clamp(MIN_HU, MAX_HU);
    }
    SliceBuf { hu, class }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use ndarray::{ArrayView2, Axis, Slice};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn config(slices: usize, size: usize) -> PhantomConfig {
        PhantomConfig {
            slices,
            size,
            ..PhantomConfig::default()
        }
    }

    fn corner(image: &Array2<f64>, n: usize) -> ArrayView2<'_, f64> {
        image
            .slice_axis(Axis(0), Slice::from(0..n))
            .slice_axis_move(Axis(1), Slice::from(0..n))
    }

    fn median(mut values: Vec<f64>) -> f64 {
        assert!(!values.is_empty());
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    /// Per slice: (lung pixels, GGO pixels, consolidation pixels).
    fn counts(set: &PhantomSet) -> Vec<(usize, usize, usize)> {
        set.masks
            .outer_iter()
            .map(|m| {
                let ggo = m.index_axis(Axis(2), 0).iter().filter(|&&v| v).count();
                let cons = m.index_axis(Axis(2), 1).iter().filter(|&&v| v).count();
                let other = m.index_axis(Axis(2), 2).iter().filter(|&&v| v).count();
                (ggo + cons + other, ggo, cons)
            })
            .collect()
    }

    #[test]
    fn hounsfield_units_match_each_class() {
        let set = generate(&config(12, 128), 7, &NoProgress).unwrap();
        let mut per_class = vec![Vec::new(); CHANNELS];
        for (hu, mask) in set.images.iter().zip(set.masks.lanes(Axis(3))) {
            let class = mask.iter().position(|&v| v).unwrap();
            per_class[class].push(*hu);
        }
        let ggo = median(per_class[0].clone());
        let cons = median(per_class[1].clone());
        let lung = median(per_class[2].clone());
        assert!((-750.0..=-250.0).contains(&ggo), "GGO median {ggo}");
        assert!(
            (-150.0..=100.0).contains(&cons),
            "consolidation median {cons}"
        );
        assert!(
            (-900.0..=-780.0).contains(&lung),
            "other lung median {lung}"
        );
        let background = &per_class[3];
        let air = background.iter().filter(|&&v| v < -950.0).count();
        assert!(
            air > background.len() / 5,
            "too little air: {air} of {}",
            background.len()
        );
        let corners = set
            .images
            .slice_axis(Axis(1), Slice::from(0..4))
            .slice_axis_move(Axis(2), Slice::from(0..4))
            .iter()
            .copied()
            .collect();
        assert!((median(corners) + 1000.0).abs() < 30.0);
        let max = background.iter().copied().fold(f64::MIN, f64::max);
        assert!(max > 300.0, "no bone: max background HU {max}");
        // Soft tissue (body wall, heart) must be present too.
        let soft = background
            .iter()
            .filter(|&&v| (-20.0..=100.0).contains(&v))
            .count();
        assert!(soft > background.len() / 10);
    }

    #[test]
    fn both_lungs_present_and_apart() {
        let n = 64;
        let set = generate(&config(20, n), 3, &NoProgress).unwrap();
        for (index, mask) in set.masks.outer_iter().enumerate() {
            let lung = mask.map_axis(Axis(2), |p| !p[3]);
            let left = lung
                .slice_axis(Axis(1), Slice::from(..n / 2))
                .iter()
                .filter(|&&v| v)
                .count();
            let right = lung
                .slice_axis(Axis(1), Slice::from(n / 2..))
                .iter()
                .filter(|&&v| v)
                .count();
            let min = n * n / 20;
            assert!(
                left > min && right > min,
                "slice {index}: lung pixels {left} / {right}"
            );
            let centre = lung
                .slice_axis(Axis(1), Slice::from(n / 2 - 1..n / 2 + 1))
                .iter()
                .filter(|&&v| v)
                .count();
            assert_eq!(centre, 0, "slice {index}: lungs touch the midline");
        }
    }

    #[test]
    fn lesion_fractions_are_realistic() {
        let set = generate(&config(40, 64), 11, &NoProgress).unwrap();
        let per_slice = counts(&set);
        let free = per_slice.iter().filter(|(_, g, c)| g + c == 0).count();
        assert!(
            (2..=12).contains(&free),
            "{free} of 40 slices lesion-free, expected about 6"
        );
        let (mut ggo, mut cons, mut fractions) = (0, 0, Vec::new());
        for &(lung, g, c) in per_slice.iter().filter(|(_, g, c)| g + c > 0) {
            let fraction = (g + c) as f64 / lung as f64;
            assert!(
                (0.02..=0.40).contains(&fraction),
                "lesion fraction {fraction}"
            );
            fractions.push(fraction);
            ggo += g;
            cons += c;
        }
        assert!(
            ggo > 2 * cons,
            "GGO {ggo} should dominate consolidation {cons}"
        );
        assert!(cons > 0);
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        assert!((0.05..=0.25).contains(&mean), "mean lesion fraction {mean}");

        let all_clean = PhantomConfig {
            lesion_free_fraction: 1.0,
            ..config(5, 64)
        };
        let set = generate(&all_clean, 11, &NoProgress).unwrap();
        assert!(
            counts(&set)
                .iter()
                .all(|&(lung, g, c)| lung > 0 && g + c == 0)
        );
        let all_sick = PhantomConfig {
            lesion_free_fraction: 0.0,
            ..config(5, 64)
        };
        let set = generate(&all_sick, 11, &NoProgress).unwrap();
        assert!(counts(&set).iter().all(|&(_, g, c)| g + c > 0));
    }

    #[test]
    fn lesions_are_denser_than_the_lung_around_them() {
        let sick = PhantomConfig {
            lesion_free_fraction: 0.0,
            ..config(4, 128)
        };
        for index in 0..sick.slices {
            let (image, mask) = generate_slice(&sick, 5, index);
            let median_of = |k: usize| {
                let values: Vec<f64> = image
                    .iter()
                    .zip(mask.lanes(Axis(2)))
                    .filter(|(_, m)| m[k])
                    .map(|(&v, _)| v)
                    .collect();
                (!values.is_empty()).then(|| median(values))
            };
            let (ggo, lung) = (median_of(0).unwrap(), median_of(2).unwrap());
            assert!(ggo > lung + 150.0, "slice {index}: GGO {ggo}, lung {lung}");
            if let Some(cons) = median_of(1) {
                assert!(
                    cons > ggo + 300.0,
                    "slice {index}: consolidation {cons}, GGO {ggo}"
                );
            }
        }
    }

    #[test]
    fn masks_are_one_hot() {
        for size in [64, 256] {
            let set = generate(&config(3, size), 1, &NoProgress).unwrap();
            assert_eq!(set.images.dim(), (3, size, size, 1));
            assert_eq!(set.masks.dim(), (3, size, size, 4));
            assert!(
                set.masks
                    .lanes(Axis(3))
                    .into_iter()
                    .all(|p| p.iter().filter(|&&v| v).count() == 1)
            );
            assert!(
                set.images
                    .iter()
                    .all(|v| v.is_finite() && (-1024.0..=3071.0).contains(v))
            );
        }
    }

    #[test]
    fn geometry_scales_with_size() {
        let lung_share = |size: usize| {
            let (_, mask) = generate_slice(&config(1, size), 9, 4);
            mask.lanes(Axis(2)).into_iter().filter(|p| !p[3]).count() as f64 / (size * size) as f64
        };
        let (small, large) = (lung_share(64), lung_share(256));
        assert!(
            small > 0.1 && (small - large).abs() < 0.02,
            "lung share {small} at 64 px, {large} at 256 px"
        );
    }

    #[test]
    fn deterministic_per_seed_and_independent_of_threads() {
        let cfg = config(6, 64);
        let a = generate(&cfg, 42, &NoProgress).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| generate(&cfg, 42, &NoProgress)).unwrap();
        assert_eq!(a.images, b.images);
        assert_eq!(a.masks, b.masks);
        let (image, mask) = generate_slice(&cfg, 42, 4);
        assert_eq!(
            image,
            a.images.index_axis(Axis(0), 4).index_axis(Axis(2), 0)
        );
        assert_eq!(mask, a.masks.index_axis(Axis(0), 4));
        let c = generate(&cfg, 43, &NoProgress).unwrap();
        assert_ne!(a.images, c.images);
        assert_ne!(a.masks, c.masks);
        // Slices of one data set are different patients, not copies.
        assert_ne!(
            a.masks.index_axis(Axis(0), 0),
            a.masks.index_axis(Axis(0), 1)
        );
    }

    #[test]
    fn noise_is_configurable() {
        let quiet = PhantomConfig {
            noise_hu: 0.0,
            ..config(1, 64)
        };
        let (image, _) = generate_slice(&quiet, 2, 0);
        assert!(corner(&image, 4).iter().all(|&v| v == -1000.0));
        let (image, _) = generate_slice(
            &PhantomConfig {
                noise_hu: 50.0,
                ..quiet
            },
            2,
            0,
        );
        let corner: Vec<f64> = corner(&image, 6).iter().copied().collect();
        let sd =
            (corner.iter().map(|v| (v + 1000.0).powi(2)).sum::<f64>() / corner.len() as f64).sqrt();
        assert!((25.0..=80.0).contains(&sd), "air noise sd {sd}");
    }

    #[test]
    fn reports_progress_per_slice() {
        struct Count(AtomicU64, AtomicU64);
        impl Progress for Count {
            fn start(&self, total: u64, unit: &str) {
                assert_eq!(unit, "slices");
                self.0.store(total, Ordering::SeqCst);
            }
            fn advance(&self, n: u64) {
                self.1.fetch_add(n, Ordering::SeqCst);
            }
        }
        let count = Count(AtomicU64::new(0), AtomicU64::new(0));
        generate(&config(5, 64), 0, &count).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 5);
        assert_eq!(count.1.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        assert!(PhantomConfig::default().validate().is_ok());
        let bad = [
            PhantomConfig {
                size: 40,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                size: 513,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                slices: 0,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                slices: 100_001,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: -0.1,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: 1.5,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                lesion_free_fraction: f64::NAN,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: -1.0,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: f64::INFINITY,
                ..PhantomConfig::default()
            },
            PhantomConfig {
                noise_hu: f64::NAN,
                ..PhantomConfig::default()
            },
        ];
        for config in &bad {
            let err = config.validate().unwrap_err();
            assert!(
                matches!(err, Error::InvalidParam { .. }),
                "{config:?}: {err}"
            );
            assert!(generate(config, 0, &NoProgress).is_err());
        }
        let err = bad[0].validate().unwrap_err().to_string();
        assert!(err.contains("size: expected 64…512, got 40"), "{err}");
        for size in [64, 512] {
            assert!(
                PhantomConfig {
                    size,
                    ..PhantomConfig::default()
                }
                .validate()
                .is_ok()
            );
        }
    }
}
