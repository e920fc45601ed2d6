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

/// Blurs `channel` (`height` × `width`, row-major) in place.
///
/// The horizontal pass fills a ring of the 2r + 1 most recent rows and the vertical pass writes
/// each output row as soon as the rows it needs are in the ring, so the working set stays a few
/// rows (in L1) instead of a full-size intermediate image. Every row a vertical tap reads, mirrored
/// or not, lies within r rows of the output row, so the ring always holds it; output row y
/// overwrites the channel only after source rows up to y + r have been read.
pub(super) fn blur(channel: &mut [f32], height: usize, width: usize, sigma: f64) {
    let kernel = gaussian_kernel(sigma);
    if kernel.len() == 1 || channel.len() != height * width || height == 0 || width == 0 {
        return;
    }
    let radius = kernel.len() / 2;
    let ring_rows = kernel.len();
    let mut ring = vec![0.0f32; ring_rows * width];
    let mut padded = vec![0.0f32; width + 2 * radius];
    let mut out = vec![0.0f32; width];
    let mut filled = 0; // source rows [0, filled) are in the ring

    for y in 0..height {
        // Horizontal pass of the rows the vertical taps of row y need. Each row is padded once
        // so the tap loop runs without border checks, and taps are the outer loop so the inner
        // one vectorises along the row.
        while filled < height.min(y + radius + 1) {
            let row = &channel[filled * width..(filled + 1) * width];
            // Only the margins need mirroring; an index fold per pixel would cost more than the
            // blur.
            padded[radius..radius + width].copy_from_slice(row);
            for i in 0..radius {
                padded[radius - 1 - i] = row[reflect101(-1 - i as isize, width)];
                padded[radius + width + i] = row[reflect101((width + i) as isize, width)];
            }
            let slot = &mut ring[(filled % ring_rows) * width..(filled % ring_rows + 1) * width];
            slot.fill(0.0);
            for (k, &w) in kernel.iter().enumerate() {
                for (o, &v) in slot.iter_mut().zip(&padded[k..k + width]) {
                    *o += w * v;
                }
            }
            filled += 1;
        }

        // Vertical pass: a row of multiply-adds per tap.
        out.fill(0.0);
        for (k, &w) in kernel.iter().enumerate() {
            let source = reflect101(y as isize + k as isize - radius as isize, height);
            let row = &ring[(source % ring_rows) * width..(source % ring_rows + 1) * width];
            for (o, &v) in out.iter_mut().zip(row) {
                *o += w * v;
            }
        }
        channel[y * width..(y + 1) * width].copy_from_slice(&out);
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

    /// The blur written as plainly as possible: every output pixel sums the mirrored 2-D
    /// neighbourhood with the outer product of the kernel.
    fn direct_blur(data: &[f32], height: usize, width: usize, sigma: f64) -> Vec<f32> {
        let k = gaussian_kernel(sigma);
        let r = (k.len() / 2) as isize;
        let mut out = vec![0.0f32; data.len()];
        for y in 0..height {
            for x in 0..width {
                let mut sum = 0.0f64;
                for (i, &wy) in k.iter().enumerate() {
                    for (j, &wx) in k.iter().enumerate() {
                        let sy = reflect101(y as isize + i as isize - r, height);
                        let sx = reflect101(x as isize + j as isize - r, width);
                        sum += f64::from(wy) * f64::from(wx) * f64::from(data[sy * width + sx]);
                    }
                }
                out[y * width + x] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn blur_matches_a_direct_convolution() {
        for (h, w, sigma) in [
            (16, 20, 1.0),
            (9, 7, 0.6),
            (2, 11, 1.0),
            (1, 5, 0.8),
            (3, 3, 2.0),
        ] {
            let data: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 11) as f32 / 11.0).collect();
            let mut fast = data.clone();
            blur(&mut fast, h, w, sigma);
            let direct = direct_blur(&data, h, w, sigma);
            for (a, b) in fast.iter().zip(&direct) {
                assert!((a - b).abs() < 1e-5, "{h}×{w}, σ {sigma}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn blur_keeps_constants_and_mean_and_smooths() {
        let (h, w) = (16, 20);
        let mut flat = vec![0.25f32; h * w];
        blur(&mut flat, h, w, 1.0);
        assert!(flat.iter().all(|&v| (v - 0.25).abs() < 1e-6));

        // A single bright pixel spreads out; its total stays (the kernel sums to one).
        let mut spot = vec![0.0f32; h * w];
        spot[8 * w + 10] = 1.0;
        blur(&mut spot, h, w, 1.0);
        assert!((spot.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(spot[8 * w + 10] < 0.2 && spot[8 * w + 11] > 0.05);
        assert!(spot.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
}
