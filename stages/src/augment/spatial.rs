//! The geometric ops (rotation, crop/scale, flips, elastic) composed into one map from each output
//! pixel to its source position, so image and labels are resampled once and always move together.

use super::config::AugmentConfig;
use super::elastic::ElasticField;
use super::plan::Plan;

/// An affine map of pixel coordinates (x right, y down, pixel centres at integers):
/// (x, y) → (xx·x + xy·y + x0, yx·x + yy·y + y0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Affine {
    pub xx: f64,
    pub xy: f64,
    pub x0: f64,
    pub yx: f64,
    pub yy: f64,
    pub y0: f64,
}

impl Affine {
    pub const IDENTITY: Self = Self {
        xx: 1.0,
        xy: 0.0,
        x0: 0.0,
        yx: 0.0,
        yy: 1.0,
        y0: 0.0,
    };

    #[cfg(test)]
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.xx * x + self.xy * y + self.x0,
            self.yx * x + self.yy * y + self.y0,
        )
    }

    /// The map that applies `self` first, then `next`.
    pub fn then(self, next: Self) -> Self {
        Self {
            xx: next.xx * self.xx + next.xy * self.yx,
            xy: next.xx * self.xy + next.xy * self.yy,
            x0: next.xx * self.x0 + next.xy * self.y0 + next.x0,
            yx: next.yx * self.xx + next.yy * self.yx,
            yy: next.yx * self.xy + next.yy * self.yy,
            y0: next.yx * self.x0 + next.yy * self.y0 + next.y0,
        }
    }
}

/// Where each output pixel takes its value from: the source position of output pixel p is
/// `source(p + d(p))` with d the elastic displacement (zero when elastic does not fire).
pub(super) struct Geometry {
    pub(super) kind: Kind,
    source: Affine,
    elastic: Option<ElasticField>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Identity,
    /// Pure mirroring: a copy with reversed indices, exact and far cheaper than resampling.
    Flips {
        horizontal: bool,
        vertical: bool,
    },
    Resample,
}

impl Geometry {
    /// Composes the geometric ops that fire in `plan`. Applied to the image they run in this
    /// order: rotation about the centre, zoom about a shifted centre (the crop), mirroring, elastic
    /// deformation; so output pixel p samples the source at rotate⁻¹(zoom⁻¹(flip(p + d(p)))), a
    /// flip being its own inverse.
    pub fn new(plan: &Plan, config: &AugmentConfig, height: usize, width: usize) -> Self {
        let (w, h) = (width as f64, height as f64);
        let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);

        let flip = Affine {
            xx: if plan.flip_horizontal { -1.0 } else { 1.0 },
            x0: if plan.flip_horizontal { w - 1.0 } else { 0.0 },
            yy: if plan.flip_vertical { -1.0 } else { 1.0 },
            y0: if plan.flip_vertical { h - 1.0 } else { 0.0 },
            ..Affine::IDENTITY
        };
        let crop = plan.crop_scale.map_or(Affine::IDENTITY, |c| {
            // The window of the source that fills the output is 1/zoom of the image; its centre
            // may move as far as keeps it inside the image (zoom > 1) or keeps the image inside it
            // (zoom < 1).
            let inv = 1.0 / c.zoom;
            let play_x = (w - w * inv).abs() / 2.0;
            let play_y = (h - h * inv).abs() / 2.0;
            Affine {
                xx: inv,
                x0: cx - cx * inv + c.shift[0] * play_x,
                yy: inv,
                y0: cy - cy * inv + c.shift[1] * play_y,
                ..Affine::IDENTITY
            }
        });
        let rotation = plan.rotation.map_or(Affine::IDENTITY, |angle| {
            let (sin, cos) = angle.sin_cos();
            Affine {
                xx: cos,
                xy: -sin,
                x0: cx - cos * cx + sin * cy,
                yx: sin,
                yy: cos,
                y0: cy - sin * cx - cos * cy,
            }
        });
        let elastic = plan.elastic.map(|seed| {
            ElasticField::new(
                height,
                width,
                config.elastic.alpha,
                config.elastic.sigma,
                seed,
            )
        });

        let kind = if plan.rotation.is_some() || plan.crop_scale.is_some() || elastic.is_some() {
            Kind::Resample
        } else if plan.flip_horizontal || plan.flip_vertical {
            Kind::Flips {
                horizontal: plan.flip_horizontal,
                vertical: plan.flip_vertical,
            }
        } else {
            Kind::Identity
        };
        Self {
            kind,
            source: flip.then(crop).then(rotation),
            elastic,
        }
    }

    /// The source position of every pixel of output row `y`, into `sx` and `sy`.
    pub(super) fn source_row(
        &self,
        y: usize,
        sx: &mut [f32],
        sy: &mut [f32],
        scratch: &mut RowScratch,
    ) {
        let a = &self.source;
        // Column numbers as floats, made once: converting the loop index per pixel would keep
        // these loops scalar.
        let xs = &scratch.xs;
        match &self.elastic {
            None => {
                // Affine along a row: a start and a step, computed in f64 and rounded once.
                let (bx, by) = (a.xy * y as f64 + a.x0, a.yy * y as f64 + a.y0);
                let (xx, yx) = (a.xx as f32, a.yx as f32);
                let (bx, by) = (bx as f32, by as f32);
                for ((ox, oy), &x) in sx.iter_mut().zip(sy.iter_mut()).zip(xs) {
                    *ox = xx * x + bx;
                    *oy = yx * x + by;
                }
            }
            Some(field) => {
                field.row(y, &mut scratch.dx, &mut scratch.dy, &mut scratch.grid);
                let (xx, xy, x0) = (a.xx as f32, a.xy as f32, a.x0 as f32);
                let (yx, yy, y0) = (a.yx as f32, a.yy as f32, a.y0 as f32);
                let row = y as f32;
                let displaced = scratch.dx.iter().zip(&scratch.dy).zip(xs);
                for ((ox, oy), ((&dx, &dy), &x)) in sx.iter_mut().zip(sy.iter_mut()).zip(displaced)
                {
                    let (px, py) = (x + dx, row + dy);
                    *ox = xx * px + xy * py + x0;
                    *oy = yx * px + yy * py + y0;
                }
            }
        }
    }
}

/// Per-row buffers of `Geometry::source_row`, reused across rows.
pub(super) struct RowScratch {
    /// The column numbers 0, 1, … as floats.
    pub xs: Vec<f32>,
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
    pub grid: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_composition_applies_in_order() {
        let shift = Affine {
            x0: 3.0,
            ..Affine::IDENTITY
        };
        let double = Affine {
            xx: 2.0,
            yy: 2.0,
            ..Affine::IDENTITY
        };
        assert_eq!(shift.then(double).apply(1.0, 1.0), (8.0, 2.0));
        assert_eq!(double.then(shift).apply(1.0, 1.0), (5.0, 2.0));
    }
}
