//! The body and lungs of one phantom slice: outlines, fills and overlays (mediastinum, spine, ribs).

use super::*;

pub(super) struct Body {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) ax: f32,
    pub(super) ay: f32,
    pub(super) wobble: Wobble,
    /// Subcutaneous fat and skin thickness as fractions of the contour radius.
    pub(super) fat: f32,
    pub(super) skin: f32,
}

impl Body {
    /// Below 1 inside; the back is squarer than the front because patients lie on the table.
    pub(super) fn level(&self, x: f32, y: f32) -> f32 {
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
    pub(super) fn midline_edge(&self, dir: f32) -> f32 {
        self.cy + dir * self.ay * (1.0 + self.wobble.at(0.0, dir))
    }
}

pub(super) struct Lung {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) ax: f32,
    pub(super) ay: f32,
    /// −1 for the lung on the image left, so local +x always points to the ribs.
    pub(super) lateral: f32,
    pub(super) wobble: Wobble,
    /// The kidney shape: a dent towards the mediastinum (deep on the heart side).
    pub(super) notch_dir: (f32, f32),
    pub(super) notch_depth: f32,
    pub(super) notch_kappa: f32,
    /// Where the lung reaches down beside the spine (the paravertebral gutter).
    pub(super) bulge_dir: (f32, f32),
    pub(super) bulge_depth: f32,
}

impl Lung {
    pub(super) fn radius(&self, dx: f32, dy: f32) -> f32 {
        let along = dx * self.notch_dir.0 + dy * self.notch_dir.1;
        let notch = self.notch_depth * (self.notch_kappa * (along - 1.0)).exp();
        let along = dx * self.bulge_dir.0 + dy * self.bulge_dir.1;
        let bulge = self.bulge_depth * (3.0 * (along - 1.0)).exp();
        1.0 + self.wobble.at(dx, dy) - notch + bulge
    }

    /// Below 1 inside.
    pub(super) fn level(&self, x: f32, y: f32) -> f32 {
        let u = (x - self.cx) * self.lateral / self.ax;
        let v = (y - self.cy) / self.ay;
        let rho = (u * u + v * v).sqrt();
        if rho < 1e-6 {
            return 0.0;
        }
        rho / self.radius(u / rho, v / rho)
    }

    pub(super) fn bounds(&self) -> (f32, f32, f32, f32) {
        let (ex, ey) = (self.ax * 1.1, self.ay * 1.1);
        (self.cx - ex, self.cx + ex, self.cy - ey, self.cy + ey)
    }

    /// The pleura in direction `angle` (0 lateral, +π/2 posterior), found in closed form because
    /// the level is linear along a ray from the centre.
    pub(super) fn boundary(&self, angle: f32) -> (f32, f32) {
        let (dx, dy) = (angle.cos(), angle.sin());
        let r = self.radius(dx, dy);
        (
            self.cx + self.lateral * self.ax * r * dx,
            self.cy + self.ay * r * dy,
        )
    }

    /// Outward unit normal of the level set through (x, y).
    pub(super) fn normal(&self, x: f32, y: f32) -> (f32, f32) {
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

    pub(super) fn parenchyma(
        &self,
        hu: f32,
        x: f32,
        y: f32,
        fine: &ValueNoise,
        coarse: &ValueNoise,
    ) -> f32 {
        // Dependent lung is a little denser (gravity), a hallmark of supine CT.
        let t = ((y - (self.cy - self.ay)) / (2.0 * self.ay)).clamp(0.0, 1.0);
        hu + 14.0 * fine.at(x, y) + 10.0 * coarse.at(x, y) + 30.0 * t * t
    }
}

/// A rotated ellipse; `q` is 1 on its outline.
pub(super) struct Ellipse {
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) a: f32,
    pub(super) b: f32,
    /// Unit vector of the `a` axis.
    pub(super) axis: (f32, f32),
}

impl Ellipse {
    pub(super) fn new(cx: f32, cy: f32, a: f32, b: f32, angle: f32) -> Self {
        Self {
            cx,
            cy,
            a,
            b,
            axis: (angle.cos(), angle.sin()),
        }
    }

    pub(super) fn circle(cx: f32, cy: f32, r: f32) -> Self {
        Self::new(cx, cy, r, r, 0.0)
    }

    pub(super) fn q(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.axis.0 + dy * self.axis.1) / self.a;
        let v = (-dx * self.axis.1 + dy * self.axis.0) / self.b;
        (u * u + v * v).sqrt()
    }
}

pub(super) enum Fill {
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
pub(super) struct Overlay {
    pub(super) shape: Ellipse,
    pub(super) fill: Fill,
    /// Paints only posterior to this y (the half ring of a vertebral arch).
    pub(super) min_y: f32,
}

impl Overlay {
    pub(super) fn new(shape: Ellipse, fill: Fill) -> Self {
        Self {
            shape,
            fill,
            min_y: f32::NEG_INFINITY,
        }
    }
}

pub(super) struct Segment {
    pub(super) a: (f32, f32),
    pub(super) b: (f32, f32),
    pub(super) r0: f32,
    pub(super) r1: f32,
}

pub(super) struct Blob {
    pub(super) x: f32,
    pub(super) y: f32,
    pub(super) sigma: f32,
    pub(super) amp: f32,
}

pub(super) struct Anatomy {
    pub(super) body: Body,
    pub(super) lungs: [Lung; 2],
    pub(super) parenchyma_hu: f32,
    pub(super) overlays: Vec<Overlay>,
}

/// One patient; the lungs' in-plane radii are scaled by `lung_scale` after every draw.
pub(super) fn random_anatomy(rng: &mut ChaCha8Rng, lung_scale: f32) -> Anatomy {
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
            ax: rng.random_range(0.27f32..0.31) * lung_scale,
            ay: rng.random_range(0.39f32..0.45) * lung_scale,
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
pub(super) fn rotate((x, y): (f32, f32), angle: f32) -> (f32, f32) {
    let (s, c) = angle.sin_cos();
    (x * c - y * s, x * s + y * c)
}
