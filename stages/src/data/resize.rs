//! Resizing slices to the training size: bilinear for intensities, nearest for labels, both with
//! half-pixel centres (as PyTorch's `align_corners=False`), so a resize there and back is unbiased.

use ndarray::{Array2, ArrayView2};

fn source_coord(i: usize, scale: f32) -> f32 {
    (i as f32 + 0.5) * scale - 0.5
}

/// Bilinear resize of a float image to `(h, w)`.
pub fn bilinear(src: ArrayView2<f32>, h: usize, w: usize) -> Array2<f32> {
    let (sh, sw) = src.dim();
    if (sh, sw) == (h, w) {
        return src.to_owned();
    }
    let (sy, sx) = (sh as f32 / h as f32, sw as f32 / w as f32);
    let cols: Vec<(usize, usize, f32)> = (0..w)
        .map(|x| {
            let fx = source_coord(x, sx).clamp(0.0, (sw - 1) as f32);
            let x0 = fx.floor() as usize;
            (x0, (x0 + 1).min(sw - 1), fx - x0 as f32)
        })
        .collect();
    Array2::from_shape_fn((h, w), |(y, x)| {
        let fy = source_coord(y, sy).clamp(0.0, (sh - 1) as f32);
        let y0 = fy.floor() as usize;
        let (y1, ty) = ((y0 + 1).min(sh - 1), fy - y0 as f32);
        let (x0, x1, tx) = cols[x];
        let top = src[[y0, x0]] * (1.0 - tx) + src[[y0, x1]] * tx;
        let bottom = src[[y1, x0]] * (1.0 - tx) + src[[y1, x1]] * tx;
        top * (1.0 - ty) + bottom * ty
    })
}

/// Nearest-neighbour resize of labels to `(h, w)`.
pub fn nearest(src: ArrayView2<u8>, h: usize, w: usize) -> Array2<u8> {
    let (sh, sw) = src.dim();
    if (sh, sw) == (h, w) {
        return src.to_owned();
    }
    let pick = |i: usize, n: usize, sn: usize| {
        (((i as f32 + 0.5) * sn as f32 / n as f32) as usize).min(sn - 1)
    };
    Array2::from_shape_fn((h, w), |(y, x)| src[[pick(y, h, sh), pick(x, w, sw)]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let a = Array2::from_shape_fn((5, 7), |(y, x)| (y * 7 + x) as f32);
        assert_eq!(bilinear(a.view(), 5, 7), a);
        let c = Array2::from_elem((9, 4), 3.0);
        assert!(
            bilinear(c.view(), 17, 13)
                .iter()
                .all(|&v| (v - 3.0).abs() < 1e-6)
        );
    }

    #[test]
    fn nearest_keeps_label_values_and_layout() {
        let labels =
            Array2::from_shape_fn((4, 4), |(y, x)| u8::from(x >= 2) + 2 * u8::from(y >= 2));
        let up = nearest(labels.view(), 8, 8);
        assert_eq!(up[[0, 0]], 0);
        assert_eq!(up[[0, 7]], 1);
        assert_eq!(up[[7, 0]], 2);
        assert_eq!(up[[7, 7]], 3);
        assert_eq!(nearest(up.view(), 4, 4), labels);
    }
}
