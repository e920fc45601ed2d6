//! Contrast-limited adaptive histogram equalisation (CLAHE) of intensities in [0, 1], as OpenCV
//! does it on 8-bit images: 256-bin tile histograms, clipped, blended bilinearly between tiles.

use ndarray::{Array2, ArrayView2};

use super::fast_math::floor_small;

const BINS: usize = 256;

/// Equalises one channel (values in [0, 1]; others are clamped) on a `tiles`×`tiles` grid, with
/// OpenCV's clip limit: no histogram bin may exceed `clip_limit` × the mean bin count. Unlike
/// OpenCV, which adds the clipped excess to every bin and so may overshoot the limit by one share,
/// the excess goes only to bins below the limit until none is left, so the limit holds exactly.
///
/// Each tile's mapping is its clipped cumulative histogram, read between bin edges by linear
/// interpolation rather than OpenCV's one value per bin, since the input is not 8-bit; its slope
/// (output per input, both in [0, 1]) is therefore at most `clip_limit`. A `clip_limit` of 1 (the
/// lowest; smaller values act as 1) leaves the image unchanged, larger values equalise more. The
/// grid has at most one tile per pixel along each axis; `tiles` = 0 acts as 1.
pub fn clahe(channel: ArrayView2<f32>, clip_limit: f64, tiles: usize) -> Array2<f32> {
    let (height, width) = channel.dim();
    let mut data: Vec<f32> = channel.iter().copied().collect();
    equalise(&mut data, height, width, clip_limit, tiles);
    Array2::from_shape_vec((height, width), data)
        .expect("a buffer of height × width values fits its own shape")
}

/// [`clahe`] in place on a row-major `height` × `width` buffer.
pub(super) fn equalise(data: &mut [f32], height: usize, width: usize, clip: f64, tiles: usize) {
    if height == 0 || width == 0 || data.len() != height * width {
        return;
    }
    let rows = TileAxis::new(height, tiles);
    let cols = TileAxis::new(width, tiles);
    let maps = tile_maps(data, &rows, &cols, clip);
    let ntx = cols.count();
    let (mut bins, mut fracs) = (vec![0u8; width], vec![0.0f32; width]);

    for (y, row) in data.chunks_exact_mut(width).enumerate() {
        let (r0, r1, wy) = (rows.lower[y], rows.upper[y], rows.weight[y]);
        // Bins first, in a loop of their own that vectorises.
        for ((bin, frac), &v) in bins.iter_mut().zip(&mut fracs).zip(row.iter()) {
            (*bin, *frac) = bin_of(v);
        }
        // Between two tile centres the four tiles are fixed, so each run reads four tables
        // chosen once; a u8 bin indexes a 256-entry table without a bounds check.
        for run in &cols.runs {
            let (t00, t01) = (&maps[r0 * ntx + run.lower], &maps[r0 * ntx + run.upper]);
            let (t10, t11) = (&maps[r1 * ntx + run.lower], &maps[r1 * ntx + run.upper]);
            let span = run.start..run.end;
            let pixels = row[span.clone()]
                .iter_mut()
                .zip(&bins[span.clone()])
                .zip(&fracs[span.clone()])
                .zip(&cols.weight[span]);
            for (((v, &bin), &frac), &wx) in pixels {
                let b = usize::from(bin);
                let at = |t: &TileMap| t.base[b] + t.slope[b] * frac;
                let top = at(t00) + (at(t01) - at(t00)) * wx;
                let bottom = at(t10) + (at(t11) - at(t10)) * wx;
                *v = (top + (bottom - top) * wy).clamp(0.0, 1.0);
            }
        }
    }
}

/// The bin of an intensity (clamped to [0, 1]) and its position within the bin, 0…1.
fn bin_of(v: f32) -> (u8, f32) {
    let scaled = v.clamp(0.0, 1.0) * BINS as f32;
    let bin = floor_small(scaled).min(BINS as i32 - 1);
    (bin as u8, scaled - bin as f32)
}

/// One tile's mapping per bin: its value at the bin's lower edge and its rise across the bin,
/// both in output units of [0, 1].
struct TileMap {
    base: [f32; BINS],
    slope: [f32; BINS],
}

/// How one image axis splits into tiles, and for each pixel the two tiles whose centres bracket it
/// with the weight of the second, the bilinear blending that hides tile seams.
struct TileAxis {
    /// Tile `i` covers pixels `bounds[i]..bounds[i + 1]`.
    bounds: Vec<usize>,
    lower: Vec<usize>,
    upper: Vec<usize>,
    weight: Vec<f32>,
    /// Maximal runs of pixels with the same pair of tiles.
    runs: Vec<Run>,
}

struct Run {
    start: usize,
    end: usize,
    lower: usize,
    upper: usize,
}

impl TileAxis {
    fn new(len: usize, tiles: usize) -> Self {
        let n = tiles.clamp(1, len.max(1));
        let bounds: Vec<usize> = (0..=n).map(|i| i * len / n).collect();
        let centres: Vec<f32> = bounds
            .windows(2)
            .map(|b| (b[0] + b[1]) as f32 / 2.0 - 0.5)
            .collect();
        let (mut lower, mut upper, mut weight) = (vec![0; len], vec![0; len], vec![0.0; len]);
        let mut i = 0;
        for p in 0..len {
            let pos = p as f32;
            while i + 1 < n && centres[i + 1] <= pos {
                i += 1;
            }
            if pos <= centres[0] || i + 1 == n {
                // Before the first or after the last centre only one tile applies.
                (lower[p], upper[p]) = (i, i);
            } else {
                (lower[p], upper[p]) = (i, i + 1);
                weight[p] = (pos - centres[i]) / (centres[i + 1] - centres[i]);
            }
        }
        let mut runs: Vec<Run> = Vec::new();
        for p in 0..len {
            match runs.last_mut() {
                Some(run) if run.lower == lower[p] && run.upper == upper[p] => run.end = p + 1,
                _ => runs.push(Run {
                    start: p,
                    end: p + 1,
                    lower: lower[p],
                    upper: upper[p],
                }),
            }
        }
        Self {
            bounds,
            lower,
            upper,
            weight,
            runs,
        }
    }

    fn count(&self) -> usize {
        self.bounds.len() - 1
    }
}

/// Every tile's mapping, row-major over the grid.
fn tile_maps(data: &[f32], rows: &TileAxis, cols: &TileAxis, clip: f64) -> Vec<TileMap> {
    let width = cols.bounds[cols.count()];
    let mut maps = Vec::with_capacity(rows.count() * cols.count());
    let mut hists = vec![[0u32; BINS]; cols.count()];
    let mut bins = vec![0u8; width];
    for band in rows.bounds.windows(2) {
        for hist in &mut hists {
            hist.fill(0);
        }
        for row in data[band[0] * width..band[1] * width].chunks_exact(width) {
            for (bin, &v) in bins.iter_mut().zip(row) {
                *bin = bin_of(v).0;
            }
            for (hist, span) in hists.iter_mut().zip(cols.bounds.windows(2)) {
                for &b in &bins[span[0]..span[1]] {
                    hist[usize::from(b)] += 1;
                }
            }
        }
        maps.extend(hists.iter().map(|hist| clipped_mapping(hist, clip)));
    }
    maps
}

/// The clipped, renormalised cumulative histogram of one tile.
fn clipped_mapping(hist: &[u32; BINS], clip: f64) -> TileMap {
    let count: f64 = hist.iter().map(|&h| f64::from(h)).sum();
    let clip = if clip.is_nan() { 1.0 } else { clip.max(1.0) };
    // At clip 1 the limit equals the mean bin count, so every bin ends exactly at it.
    let limit = clip * count / BINS as f64;
    let mut bins = hist.map(|h| f64::from(h).min(limit));
    let mut excess: f64 = hist.iter().map(|&h| (f64::from(h) - limit).max(0.0)).sum();
    // Each round either places all of the excess or fills at least one more bin to the limit, so
    // it ends within BINS rounds.
    for _ in 0..BINS {
        let open = bins.iter().filter(|&&b| b < limit).count();
        if excess <= count * 1e-12 || open == 0 {
            break;
        }
        let share = excess / open as f64;
        excess = 0.0;
        for b in bins.iter_mut().filter(|b| **b < limit) {
            *b += share;
            if *b > limit {
                excess += *b - limit;
                *b = limit;
            }
        }
    }

    let total: f64 = bins.iter().sum();
    let mut map = TileMap {
        base: [0.0; BINS],
        slope: [0.0; BINS],
    };
    if total <= 0.0 {
        // An empty tile (only possible for an empty image) maps like the identity.
        for b in 0..BINS {
            map.base[b] = b as f32 / BINS as f32;
            map.slope[b] = 1.0 / BINS as f32;
        }
        return map;
    }
    let mut below = 0.0;
    for (b, &count) in bins.iter().enumerate() {
        map.base[b] = (below / total) as f32;
        map.slope[b] = (count / total) as f32;
        below += count;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A low-contrast image: values in 0.4…0.6, a gradient plus texture, brighter on the right.
    fn low_contrast(size: usize) -> Array2<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        Array2::from_shape_fn((size, size), |(y, x)| {
            let texture: f32 = rng.random_range(-0.04..0.04);
            0.45 + 0.1 * (x as f32 / size as f32) + 0.02 * ((y / 8) % 2) as f32 + texture
        })
    }

    fn std(a: &Array2<f32>) -> f64 {
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        (a.iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    #[test]
    fn output_stays_in_unit_range_and_contrast_grows_with_clip() {
        let image = low_contrast(64);
        let before = std(&image);
        let mut last = before;
        for clip in [1.5, 2.0, 4.0, 8.0] {
            let out = clahe(image.view(), clip, 4);
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            let after = std(&out);
            assert!(after > last, "clip {clip}: std {after} not above {last}");
            last = after;
        }
        assert!(
            last > 2.0 * before,
            "CLAHE should stretch a low-contrast image"
        );
    }

    #[test]
    fn clip_limit_bounds_every_tile_slope() {
        let image = low_contrast(64);
        let data: Vec<f32> = image.iter().copied().collect();
        for (clip, tiles) in [(1.0, 4), (2.0, 4), (3.5, 8), (40.0, 3)] {
            let (rows, cols) = (TileAxis::new(64, tiles), TileAxis::new(64, tiles));
            let maps = tile_maps(&data, &rows, &cols, clip);
            assert_eq!(maps.len(), tiles * tiles);
            let mut steepest = 0.0f32;
            for tile in &maps {
                // Normalised slope: output rise per bin over the bin's width of 1/256.
                let slope = tile
                    .slope
                    .iter()
                    .map(|s| s * BINS as f32)
                    .fold(0.0, f32::max);
                assert!(
                    slope <= clip as f32 * (1.0 + 1e-5),
                    "slope {slope} > clip {clip}"
                );
                steepest = steepest.max(slope);
                // Each mapping runs from 0 to 1 without a jump.
                let end = tile.base[BINS - 1] + tile.slope[BINS - 1];
                assert!(tile.base[0] == 0.0 && (end - 1.0).abs() < 1e-5);
                for b in 1..BINS {
                    let jump = tile.base[b] - (tile.base[b - 1] + tile.slope[b - 1]);
                    assert!(jump.abs() < 1e-6, "jump {jump} at bin {b}");
                }
            }
            // The histograms are peaked, so a low limit is actually reached.
            if clip < 10.0 {
                assert!(
                    steepest >= clip as f32 * 0.99,
                    "steepest {steepest}, clip {clip}"
                );
            }
        }
    }

    #[test]
    fn clip_one_is_the_identity_and_constants_stay_constant() {
        let image = low_contrast(48);
        let same = clahe(image.view(), 1.0, 4);
        for (a, b) in image.iter().zip(&same) {
            assert!((a - b).abs() < 1e-5, "{a} → {b}");
        }
        let flat = Array2::from_elem((40, 56), 0.3f32);
        let out = clahe(flat.view(), 3.0, 8);
        let (lo, hi) = out
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(
            hi - lo < 1e-5,
            "a constant image must stay constant: {lo}…{hi}"
        );
    }

    #[test]
    fn tiny_and_odd_shapes_work() {
        let image = Array2::from_shape_fn((3, 70), |(y, x)| ((x + y) % 7) as f32 / 7.0);
        let out = clahe(image.view(), 2.0, 8);
        assert_eq!(out.dim(), (3, 70));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(clahe(Array2::zeros((0, 5)).view(), 2.0, 8).dim(), (0, 5));
        assert_eq!(clahe(image.view(), 2.0, 0).dim(), (3, 70));
    }
}
