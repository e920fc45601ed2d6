//! Binary morphology on volumes: connected components in 3-D, Euclidean dilation and erosion and
//! hole filling slice by slice. Distances come from an exact squared Euclidean distance transform
//! (Felzenszwalb and Huttenlocher's lower envelope), so a closing of radius 7 mm costs the same as
//! one of 1 mm.

use ndarray::{Array2, Array3, ArrayView2, ArrayViewMut2, Axis};

/// Labels of the 6-connected components of `mask` (0 = outside) and each label's voxel count
/// (index 0 unused).
pub fn components(mask: &Array3<bool>) -> (Array3<u32>, Vec<usize>) {
    let (ni, nj, nk) = mask.dim();
    let mut labels = Array3::<u32>::zeros((ni, nj, nk));
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in ndarray::indices((ni, nj, nk)) {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0;
        labels[start] = label;
        stack.push(start);
        while let Some((i, j, k)) = stack.pop() {
            size += 1;
            let mut visit = |p: (usize, usize, usize)| {
                if mask[p] && labels[p] == 0 {
                    labels[p] = label;
                    stack.push(p);
                }
            };
            if i > 0 {
                visit((i - 1, j, k));
            }
            if i + 1 < ni {
                visit((i + 1, j, k));
            }
            if j > 0 {
                visit((i, j - 1, k));
            }
            if j + 1 < nj {
                visit((i, j + 1, k));
            }
            if k > 0 {
                visit((i, j, k - 1));
            }
            if k + 1 < nk {
                visit((i, j, k + 1));
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// Squared distance (in mm²) from each pixel to the nearest `true` pixel of `mask`, with pixel
/// sizes `(di, dj)`; `f64::INFINITY` where the slice holds none.
pub fn distance2(mask: ArrayView2<bool>, spacing: [f64; 2]) -> Array2<f64> {
    let (ni, nj) = mask.dim();
    let mut d = Array2::from_shape_fn((ni, nj), |p| if mask[p] { 0.0 } else { f64::INFINITY });
    let mut buf = Vec::new();
    for (axis, step) in [(0, spacing[0]), (1, spacing[1])] {
        for mut lane in d.lanes_mut(Axis(axis)) {
            buf.clear();
            buf.extend(lane.iter().copied());
            let out = transform_1d(&buf, step * step);
            for (v, o) in lane.iter_mut().zip(out) {
                *v = o;
            }
        }
    }
    d
}

/// The 1-D squared distance transform of `f` with squared sample step `s2`.
fn transform_1d(f: &[f64], s2: f64) -> Vec<f64> {
    let n = f.len();
    let mut out = vec![f64::INFINITY; n];
    let mut v = vec![0usize; n];
    let mut z = vec![0f64; n + 1];
    let mut k: isize = -1;
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            if k < 0 {
                k = 0;
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
                break;
            }
            let p = v[k as usize];
            let s = ((f[q] + s2 * (q * q) as f64) - (f[p] + s2 * (p * p) as f64))
                / (2.0 * s2 * (q as f64 - p as f64));
            if s <= z[k as usize] {
                k -= 1;
                continue;
            }
            k += 1;
            v[k as usize] = q;
            z[k as usize] = s;
            z[k as usize + 1] = f64::INFINITY;
            break;
        }
    }
    if k < 0 {
        return out;
    }
    let mut k = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let dq = q as f64 - p as f64;
        *o = s2 * dq * dq + f[p];
    }
    out
}

/// Closing (dilation then erosion) of each slice with a disk of `radius` mm.
pub fn close_slices(mask: &mut Array3<bool>, spacing: [f64; 2], radius: f64) {
    let r2 = radius * radius;
    for mut slice in mask.axis_iter_mut(Axis(2)) {
        if !slice.iter().any(|&v| v) {
            continue;
        }
        let grown = distance2(slice.view(), spacing).mapv(|d| d <= r2);
        let outside = grown.mapv(|v| !v);
        let far = distance2(outside.view(), spacing);
        slice.zip_mut_with(&far, |v, &d| *v = d > r2);
    }
}

/// Fills the holes of each slice: background not connected (4-connected) to the slice's border.
pub fn fill_holes_slices(mask: &mut Array3<bool>) {
    for slice in mask.axis_iter_mut(Axis(2)) {
        fill_holes_2d(slice);
    }
}

fn fill_holes_2d(mut slice: ArrayViewMut2<bool>) {
    let (ni, nj) = slice.dim();
    let mut outside = Array2::<bool>::from_elem((ni, nj), false);
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for i in 0..ni {
        stack.push((i, 0));
        stack.push((i, nj.saturating_sub(1)));
    }
    for j in 0..nj {
        stack.push((0, j));
        stack.push((ni.saturating_sub(1), j));
    }
    while let Some((i, j)) = stack.pop() {
        if slice[(i, j)] || outside[(i, j)] {
            continue;
        }
        outside[(i, j)] = true;
        if i > 0 {
            stack.push((i - 1, j));
        }
        if i + 1 < ni {
            stack.push((i + 1, j));
        }
        if j > 0 {
            stack.push((i, j - 1));
        }
        if j + 1 < nj {
            stack.push((i, j + 1));
        }
    }
    slice.zip_mut_with(&outside, |v, &o| *v = !o);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_is_exact() {
        let mut m = Array2::from_elem((9, 7), false);
        m[(2, 3)] = true;
        m[(8, 0)] = true;
        let d = distance2(m.view(), [1.0, 2.0]);
        for ((i, j), v) in d.indexed_iter() {
            let a = (i as f64 - 2.0).powi(2) + (2.0 * (j as f64 - 3.0)).powi(2);
            let b = (i as f64 - 8.0).powi(2) + (2.0 * j as f64).powi(2);
            assert!((v - a.min(b)).abs() < 1e-9, "({i},{j}) {v}");
        }
    }

    #[test]
    fn components_closing_and_holes() {
        let mut m = Array3::from_elem((10, 10, 2), false);
        for i in 1..4 {
            for j in 1..4 {
                m[(i, j, 0)] = true;
                m[(i, j, 1)] = true;
            }
        }
        m[(8, 8, 1)] = true;
        let (labels, sizes) = components(&m);
        assert_eq!(sizes, vec![0, 18, 1]);
        assert_eq!(labels[(8, 8, 1)], 2);
        // A ring with a hole, filled.
        let mut ring = Array3::from_elem((7, 7, 1), false);
        for i in 1..6 {
            for j in 1..6 {
                ring[(i, j, 0)] = i == 1 || i == 5 || j == 1 || j == 5;
            }
        }
        fill_holes_slices(&mut ring);
        assert!(ring[(3, 3, 0)] && !ring[(0, 0, 0)]);
        assert_eq!(ring.iter().filter(|&&v| v).count(), 25);
        // Two blocks 2 px apart join under a closing of radius 2.
        let mut two = Array3::from_elem((12, 5, 1), false);
        for j in 1..4 {
            for i in (1..4).chain(6..9) {
                two[(i, j, 0)] = true;
            }
        }
        close_slices(&mut two, [1.0, 1.0], 2.0);
        assert!(two[(4, 2, 0)] && two[(5, 2, 0)]);
        assert!(!two[(11, 2, 0)]);
    }
}
