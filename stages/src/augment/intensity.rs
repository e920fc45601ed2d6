//! The point-wise intensity ops (brightness, contrast, gamma, noise): they change only the image,
//! never the labels, and keep intensities in [0, 1].

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

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
/// `stream` of a generator of its own seeded with `seed`.
pub(super) fn noise(data: &mut [f32], sigma: f64, seed: u64, stream: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let sigma = sigma as f32;
    for v in data {
        let n: f32 = rng.sample(StandardNormal);
        *v = (*v + sigma * n).clamp(0.0, 1.0);
    }
}

/// `x^g` for `x` in [0, 1] and `g` > 0, to a relative error of about 1e-6, as 2^(g·log2 x) with
/// polynomial log2 and exp2. Written without branches or libm calls so the loop over a slice
/// vectorises; `f32::powf` costs several times more and dominated the gamma op.
fn pow01(x: f32, g: f32) -> f32 {
    const SQRT_2: f32 = std::f32::consts::SQRT_2;
    // x = m · 2^e with m in [√½, √2), so ln m is small and its series converges fast.
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += i32::from(big);
    // ln m = 2·atanh(t) with t = (m − 1)/(m + 1), |t| ≤ 0.172: five terms reach 1e-9.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    let log2 = e as f32 + 2.0 * t * series * std::f32::consts::LOG2_E;

    // 2^y for y ≤ 0 = 2^n · 2^f with n the nearest integer and |f| ≤ ½; below 2^-126 the
    // result is 0 for all practical purposes. Adding 1.5·2^23 rounds y to an integer held in the
    // low mantissa bits: a float-to-int `as` would saturate and check for NaN lane by lane.
    const ROUND: f32 = 12_582_912.0;
    let y = (g * log2).clamp(-126.0, 0.0);
    let rounded = y + ROUND;
    let n = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let z = (y - (rounded - ROUND)) * std::f32::consts::LN_2;
    let exp = 1.0
        + z * (1.0
            + z * (1.0 / 2.0
                + z * (1.0 / 6.0 + z * (1.0 / 24.0 + z * (1.0 / 120.0 + z * (1.0 / 720.0))))));
    let scale = f32::from_bits(n.wrapping_add(127) << 23);
    if x > 0.0 { exp * scale } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<f32> {
        (0..=1000).map(|i| i as f32 / 1000.0).collect()
    }

    #[test]
    fn pow01_matches_powf() {
        for g in [0.1f32, 0.7, 1.0, 1.37, 1.5, 4.0] {
            for x in ramp().into_iter().chain([1e-6, 1e-20, 0.999_999]) {
                let (fast, exact) = (pow01(x, g), x.powf(g));
                assert!(
                    (fast - exact).abs() <= 2e-6 * exact.max(1e-3),
                    "{x}^{g}: {fast} vs {exact}"
                );
            }
        }
        assert_eq!(pow01(0.0, 0.7), 0.0);
        assert_eq!(pow01(1.0, 1.5), 1.0);
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
