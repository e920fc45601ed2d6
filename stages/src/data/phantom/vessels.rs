//! Pulmonary vessels: branching, tapering segments grown inside each lung.

use super::*;

/// One branch still to grow: start, unit direction, length, radius, generation.
pub(super) type Sprout = ((f32, f32), (f32, f32), f32, f32, u32);

/// Tapering, sometimes forking vessel segments; a branch stops at the pleura or after a few
/// generations, because an axial slice only cuts short stretches of the in-plane vessels.
pub(super) fn grow_vessels(
    rng: &mut ChaCha8Rng,
    lung: &Lung,
    root: Sprout,
    out: &mut Vec<Segment>,
) {
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

pub(super) fn random_vessels(rng: &mut ChaCha8Rng, lungs: &[Lung; 2]) -> Vec<Segment> {
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
