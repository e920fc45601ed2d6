//! One phantom slice drawn: body, lungs, vessels and lesions into HU and masks, with noise.

use super::*;

pub(super) fn render(config: &PhantomConfig, seed: u64, index: usize) -> SliceBuf {
    let mut rng = slice_rng(seed, index);
    // All geometry is drawn before anything that depends on the size, so one (seed, index) gives
    // the same patient at every resolution.
    let scene = Scene::draw(&mut rng, 1.0);
    let lesions = random_lesions(&mut rng, &scene.anatomy.lungs, config.lesion_free_fraction);
    let painted = scene.paint(config.size);
    let fields = lesions
        .as_ref()
        .map(|plan| painted.slice_fields(&scene, plan));
    let mut out = painted.finish(&scene, fields.as_ref());
    add_noise(&mut out.hu, config.noise_hu, &mut rng);
    out
}

/// Everything of one slice drawn before pixels: the anatomy and the texture fields.
pub(super) struct Scene {
    pub(super) anatomy: Anatomy,
    tissue_tex: ValueNoise,
    lung_fine: ValueNoise,
    lung_coarse: ValueNoise,
    pub(super) patchiness: ValueNoise,
    lesion_tex: ValueNoise,
    vessels: Vec<Segment>,
}

/// A slice painted without lesions: HU, what each pixel is, and vessel coverage.
pub(super) struct Painted {
    pub(super) grid: Grid,
    hu: Vec<f32>,
    pub(super) kind: Vec<u8>,
    vessel: Vec<f32>,
    pub(super) lung_pixels: Vec<usize>,
}

/// The two lesion fields of a slice and the values above which a pixel is GGO / consolidation.
pub(super) struct LesionFields {
    pub(super) ggo: Vec<f32>,
    pub(super) cons: Vec<f32>,
    pub(super) t_ggo: f32,
    pub(super) t_cons: f32,
}

impl Scene {
    /// Draws a patient; `lung_scale` shrinks the lungs in plane (1 for a slice phantom, less
    /// towards the apex and the base of a volume). The draws do not depend on it, so one rng
    /// state gives the same patient at every level.
    pub(super) fn draw(rng: &mut ChaCha8Rng, lung_scale: f32) -> Self {
        let anatomy = random_anatomy(rng, lung_scale);
        let tissue_tex = ValueNoise::new(rng, 24);
        let lung_fine = ValueNoise::new(rng, 32);
        let lung_coarse = ValueNoise::new(rng, 6);
        let patchiness = ValueNoise::new(rng, 14);
        let lesion_tex = ValueNoise::new(rng, 20);
        let vessels = random_vessels(rng, &anatomy.lungs);
        Self {
            anatomy,
            tissue_tex,
            lung_fine,
            lung_coarse,
            patchiness,
            lesion_tex,
            vessels,
        }
    }

    pub(super) fn paint(&self, s: usize) -> Painted {
        let grid = Grid::new(s);
        let pixels = s * s;
        let Self {
            anatomy,
            tissue_tex,
            lung_fine,
            lung_coarse,
            vessels,
            ..
        } = self;
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
                    hu[i] = lung.parenchyma(anatomy.parenchyma_hu, x, y, lung_fine, lung_coarse);
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
        for seg in vessels {
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

        let lung_pixels: Vec<usize> = (0..pixels).filter(|&i| kind[i] == LUNG).collect();
        Painted {
            grid,
            hu,
            kind,
            vessel,
            lung_pixels,
        }
    }
}

impl Painted {
    /// The slice phantom's lesions: blob sums made patchy, with thresholds that cover the plan's
    /// share of this slice's lung.
    pub(super) fn slice_fields(&self, scene: &Scene, plan: &LesionPlan) -> LesionFields {
        let (grid, kind, lung_pixels) = (self.grid, &self.kind, &self.lung_pixels);
        let s = grid.size;
        let pixels = s * s;
        let patchiness = &scene.patchiness;
        let mut ggo = vec![0.0f32; pixels];
        let mut cons = vec![0.0f32; pixels];
        add_blobs(&mut ggo, kind, grid, &plan.ggo);
        add_blobs(&mut cons, kind, grid, &plan.cons);
        // Modulating the smooth sum by a second field makes the patches irregular and patchy.
        for &i in lung_pixels {
            let (x, y) = (grid.coord(i % s), grid.coord(i / s));
            ggo[i] *= 1.0 + 0.6 * patchiness.at(x, y);
            cons[i] *= 1.0 + 0.5 * patchiness.at(y, x);
        }
        let n = lung_pixels.len() as f32;
        let mut values: Vec<f32> = lung_pixels.iter().map(|&i| cons[i]).collect();
        let t_cons = threshold_for(&mut values, (plan.consolidation * n).round() as usize);
        let consolidated = lung_pixels.iter().filter(|&&i| cons[i] >= t_cons).count();
        values.clear();
        values.extend(
            lung_pixels
                .iter()
                .filter(|&&i| cons[i] < t_cons)
                .map(|&i| ggo[i]),
        );
        let wanted = ((plan.total * n).round() as usize).saturating_sub(consolidated);
        let t_ggo = threshold_for(&mut values, wanted);
        LesionFields {
            ggo,
            cons,
            t_ggo,
            t_cons,
        }
    }

    /// Classes and lesion HU over the painted slice; no fields means a lesion-free slice.
    pub(super) fn finish(self, scene: &Scene, fields: Option<&LesionFields>) -> SliceBuf {
        let Painted {
            grid,
            mut hu,
            kind,
            vessel,
            lung_pixels,
        } = self;
        let s = grid.size;
        let lesion_tex = &scene.lesion_tex;
        let mut class: Vec<u8> = kind
            .iter()
            .map(|&k| if k == LUNG { OTHER_LUNG } else { BACKGROUND })
            .collect();
        let (t_ggo, t_cons) =
            fields.map_or((f32::INFINITY, f32::INFINITY), |f| (f.t_ggo, f.t_cons));
        for &i in &lung_pixels {
            let (x, y) = (grid.coord(i % s), grid.coord(i / s));
            let mut value = hu[i];
            if let Some(f) = fields {
                let (g, k) = (f.ggo[i], f.cons[i]);
                if k >= t_cons {
                    class[i] = CONSOLIDATION;
                } else if g >= t_ggo {
                    class[i] = GGO;
                }
                if class[i] == GGO {
                    value = -680.0
                        + 300.0 * smoothstep(t_ggo, 2.2 * t_ggo, g)
                        + 45.0 * lesion_tex.at(x, y);
                } else if t_ggo.is_finite() {
                    // A faint halo: ground glass fades into normal lung rather than stopping at a wall.
                    value += (-720.0 - value) * 0.5 * smoothstep(0.6 * t_ggo, t_ggo, g);
                }
            }
            value += (VESSEL_HU - value) * vessel[i];
            if class[i] == CONSOLIDATION {
                let k = fields.map_or(0.0, |f| f.cons[i]);
                value = -90.0
                    + 110.0 * smoothstep(t_cons, 1.8 * t_cons, k)
                    + 20.0 * lesion_tex.at(y, x);
            }
            hu[i] = value;
        }

        SliceBuf { hu, class }
    }
}

/// Additive Gaussian noise of `noise_hu`, clipped to what a scanner stores.
pub(super) fn add_noise(hu: &mut [f32], noise_hu: f64, rng: &mut ChaCha8Rng) {
    let sigma = if noise_hu.is_finite() {
        noise_hu.max(0.0) as f32
    } else {
        0.0
    };
    for value in hu {
        *value = (*value + sigma * normal(rng)).clamp(MIN_HU, MAX_HU);
    }
}
