//! The point-wise intensity ops (brightness, contrast, gamma, noise): they change only the image,
//! never the labels, and keep intensities in [0, 1].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fast_math::{normal_pair, pow01};

/// Multiplies every intensity by `factor`, as nnU-Net's multiplicative brightness.
pub(super) fn brightness(data: &mut [f32], factor: f64) {
    let factor = factor as f32;
    for v in data {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// Scales one channel's intensities about its mean by `factor`, as nnU-Net's contrast transform
/// (which clips to the original range; this clips to [0, 1]).
pub(super) fn contrast(channel: &mut [f32], factor: f64) {
    if channel.is_empty() {
        return;
    }
    let mean = (channel.iter().map(|&v| f64::from(v)).sum::<f64>() / channel.len() as f64) as f32;
    let factor = factor as f32;
    for v in channel {
        *v = ((*v - mean) * factor + mean).clamp(0.0, 1.0);
    }
}

/// Raises every intensity to the power `gamma` (> 0); 0 and 1 stay fixed.
pub(super) fn gamma(data: &mut [f32], gamma: f64) {
    let g = gamma as f32;
    for v in data {
        *v = pow01(v.clamp(0.0, 1.0), g);
    }
}

/// Adds independent Gaussian noise of standard deviation `sigma` to every value, from stream
/// `stream` of a generator of its own seeded with `seed`. The random words come from the
/// generator in blocks and become normal numbers in a loop that vectorises; drawing them one by
/// one through rand_distr's ziggurat sampler made the op nearly twice as slow.
pub(super) fn noise(data: &mut [f32], sigma: f64, seed: u64, stream: u64) {
    const BLOCK: usize = 2048;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let sigma = sigma as f32;
    let mut bytes = [0u8; 4 * BLOCK];
    let mut normals = [0.0f32; BLOCK];
    for chunk in data.chunks_mut(BLOCK) {
        rng.fill_bytes(&mut bytes);
        let words = bytes.chunks_exact(8).map(|w| {
            let word = |i: usize| u32::from_le_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
            (word(0), word(4))
        });
        for (pair, (a, b)) in normals.chunks_exact_mut(2).zip(words) {
            (pair[0], pair[1]) = normal_pair(a, b);
        }
        for (v, &n) in chunk.iter_mut().zip(&normals) {
            *v = (*v + sigma * n).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<f32> {
        (0..=1000).map(|i| i as f32 / 1000.0).collect()
    }

    #[test]
    fn ops_keep_the_unit_range() {
        let mut data = ramp();
        brightness(&mut data, 1.25);
        assert!(data.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(data[1000], 1.0);
        contrast(&mut data, 1.8);
        assert!(data.iter().all(|v| (0.0..=1.0).contains(v)));
        gamma(&mut data, 0.7);
        assert!(data.iter().all(|v| (0.0..=1.0).contains(v)));
        noise(&mut data, 0.3, 1, 0);
        assert!(data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn contrast_keeps_the_mean_when_nothing_clips() {
        let mut data: Vec<f32> = (0..100).map(|i| 0.4 + 0.002 * i as f32).collect();
        let mean = |d: &[f32]| d.iter().sum::<f32>() / d.len() as f32;
        let (before, spread) = (mean(&data), data[99] - data[0]);
        contrast(&mut data, 1.25);
        assert!((mean(&data) - before).abs() < 1e-5);
        assert!(((data[99] - data[0]) / spread - 1.25).abs() < 1e-4);
    }

    #[test]
    fn noise_has_the_requested_spread_and_repeats_per_seed() {
        let mut a = vec![0.5f32; 20_000];
        let mut b = a.clone();
        noise(&mut a, 0.05, 9, 0);
        noise(&mut b, 0.05, 9, 0);
        assert_eq!(a, b);
        let var = a.iter().map(|&v| (f64::from(v) - 0.5).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var.sqrt() / 0.05 - 1.0).abs() < 0.05, "std {}", var.sqrt());
        for (seed, stream) in [(10, 0), (9, 1)] {
            let mut c = vec![0.5f32; 20_000];
            noise(&mut c, 0.05, seed, stream);
            assert_ne!(a, c);
        }
    }
}
