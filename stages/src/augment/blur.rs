//! Separable Gaussian blur of one channel with mirrored borders (OpenCV's BORDER_REFLECT_101), and
//! the sampled Gaussian kernel that the elastic field reuses.

/// Normalised weights of a Gaussian with standard deviation `sigma`, over ±⌈3σ⌉ taps, which holds
/// 99.7 % of its mass; `sigma` ≤ 0 gives the identity kernel.
pub(super) fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    if sigma.is_nan() || sigma <= 0.0 {
        return vec![1.0];
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| (w / sum) as f32).collect()
}

/// Blurs `channel` (`height` × `width`, row-major) in place; `scratch` is reused between calls so
/// a slice costs no allocation after the first.
pub(super) fn blur(
    channel: &mut [f32],
    height: usize,
    width: usize,
    sigma: f64,
    scratch: &mut Vec<f32>,
) {
    let kernel = gaussian_kernel(sigma);
    if kernel.len() == 1 || channel.len() != height * width || height == 0 || width == 0 {
        return;
    }
    let radius = kernel.len() / 2;

    // Horizontal pass into `scratch`: each row is padded once so the tap loop runs without border
    // checks, and taps are the outer loop so the inner one vectorises along the row.
    scratch.clear();
    scratch.resize(height * width, 0.0);
    let mut padded = vec![0.0f32; width + 2 * radius];
    for (row, out) in channel
        .chunks_exact(width)
        .zip(scratch.chunks_exact_mut(width))
    {
        // Only the margins need mirroring; an index fold per pixel would cost more than the blur.
        padded[radius..radius + width].copy_from_slice(row);
        for i in 0..radius {
            padded[radius - 1 - i] = row[reflect101(-1 - i as isize, width)];
            padded[radius + width + i] = row[reflect101((width + i) as isize, width)];
        }
        for (k, &w) in kernel.iter().enumerate() {
            for (o, &v) in out.iter_mut().zip(&padded[k..k + width]) {
                *o += w * v;
            }
        }
    }

    // Vertical pass back into `channel`, again a row of multiply-adds per tap.
    for (y, out) in channel.chunks_exact_mut(width).enumerate() {
        out.fill(0.0);
        for (k, &w) in kernel.iter().enumerate() {
            let source = reflect101(y as isize + k as isize - radius as isize, height);
            let row = &scratch[source * width..(source + 1) * width];
            for (o, &v) in out.iter_mut().zip(row) {
                *o += w * v;
            }
        }
    }
}

/// Mirrors an index into `0..n` without repeating the edge pixel (…, 2, 1, 0, 1, 2, …), folding
/// as often as needed when the kernel is wider than the image.
pub(super) fn reflect101(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let folded = i.rem_euclid(period);
    let index = if folded < n as isize {
        folded
    } else {
        period - folded
    };
    index as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel(1.0);
        assert_eq!(k.len(), 7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(k[0], k[6]);
        assert_eq!(gaussian_kernel(0.0), vec![1.0]);
    }

    #[test]
    fn reflect_folds_like_opencv() {
        let got: Vec<usize> = (-3..8).map(|i| reflect101(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect101(-7, 3), 1);
        assert_eq!(reflect101(5, 1), 0);
    }

    #[test]
    fn blur_keeps_constants_and_mean_and_smooths() {
        let (h, w) = (16, 20);
        let mut scratch = Vec::new();
        let mut flat = vec![0.25f32; h * w];
        blur(&mut flat, h, w, 1.0, &mut scratch);
        assert!(flat.iter().all(|&v| (v - 0.25).abs() < 1e-6));

        // A single bright pixel spreads out; its total stays (the kernel sums to one).
        let mut spot = vec![0.0f32; h * w];
        spot[8 * w + 10] = 1.0;
        blur(&mut spot, h, w, 1.0, &mut scratch);
        assert!((spot.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(spot[8 * w + 10] < 0.2 && spot[8 * w + 11] > 0.05);
        assert!(spot.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}
