//! Where the lesions go: GGO and consolidation blobs sized to a share of the lung area.

use super::*;

/// Lung area in normalised units on a fixed lattice, so the lesion plan (and so every random draw
/// before the pixel noise) is the same at every image size.
pub(super) fn lung_area(lungs: &[Lung; 2]) -> f32 {
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

pub(super) struct LesionPlan {
    /// Share of lung pixels with any lesion, and with consolidation.
    pub(super) total: f32,
    pub(super) consolidation: f32,
    pub(super) ggo: Vec<Blob>,
    pub(super) cons: Vec<Blob>,
}

pub(super) fn random_lesions(
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
pub(super) fn threshold_for(values: &mut [f32], count: usize) -> f32 {
    if count == 0 || values.is_empty() {
        return f32::INFINITY;
    }
    let k = values.len() - count.min(values.len());
    let (_, t, _) = values.select_nth_unstable_by(k, f32::total_cmp);
    t.max(LESION_FLOOR)
}

pub(super) fn add_blobs(field: &mut [f32], kind: &[u8], grid: Grid, blobs: &[Blob]) {
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
