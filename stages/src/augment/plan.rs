//! The random decisions for one slice, drawn up front in a fixed order so that each op's draws do
//! not depend on which other ops fire or on their probabilities.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::config::{AugmentConfig, OPS};

/// Which ops fire on one slice, with their drawn parameters.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// Counter-clockwise on screen (x right, y down), radians.
    pub rotation: Option<f64>,
    pub crop_scale: Option<CropDraw>,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    /// Seed of the elastic field's own generator.
    pub elastic: Option<u64>,
    pub clahe: Option<f64>,
    /// Standard deviation and the seed of the noise's own generator.
    pub noise: Option<(f64, u64)>,
    pub blur: Option<f64>,
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    pub gamma: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CropDraw {
    /// Above 1 magnifies.
    pub zoom: f64,
    /// Where the crop window sits, in −1…1 of its free play along x and y.
    pub shift: [f64; 2],
}

/// Every call consumes exactly `OPS + 12` numbers from `rng`, whatever fires: first one "fires?"
/// draw per op, then every op's parameters, drawn even for ops that do not fire. Ops that need many
/// numbers (elastic, noise) get a seed for a generator of their own, so their bulk draws neither
/// cost time when the op is off nor shift the stream of the caller's next slice.
pub(super) fn draw(config: &AugmentConfig, rng: &mut ChaCha8Rng) -> Plan {
    let mut fires = [false; OPS];
    for (fire, (_, p)) in fires.iter_mut().zip(config.probabilities()) {
        // `unit` is below 1, so p = 1 always fires and p = 0 never does.
        *fire = unit(rng) < p;
    }
    let [
        rot,
        crop,
        flip_h,
        flip_v,
        elastic,
        clahe,
        noise,
        blur,
        bright,
        contrast,
        gamma,
    ] = fires;

    let max = config.rotation.max_degrees;
    let angle = uniform(rng, [-max, max]).to_radians();
    let zoom = uniform(rng, config.crop_scale.scale);
    let shift = [uniform(rng, [-1.0, 1.0]), uniform(rng, [-1.0, 1.0])];
    let elastic_seed = rng.next_u64();
    let clip = uniform(rng, config.clahe.clip_limit);
    let noise_sigma = uniform(rng, config.noise.sigma);
    let noise_seed = rng.next_u64();
    let blur_sigma = uniform(rng, config.blur.sigma);
    let brightness = uniform(rng, config.brightness.range);
    let contrast_factor = uniform(rng, config.contrast.range);
    let gamma_value = uniform(rng, config.gamma.range);

    Plan {
        rotation: rot.then_some(angle),
        crop_scale: crop.then_some(CropDraw { zoom, shift }),
        flip_horizontal: flip_h,
        flip_vertical: flip_v,
        elastic: elastic.then_some(elastic_seed),
        clahe: clahe.then_some(clip),
        noise: noise.then_some((noise_sigma, noise_seed)),
        blur: blur.then_some(blur_sigma),
        brightness: bright.then_some(brightness),
        contrast: contrast.then_some(contrast_factor),
        gamma: gamma.then_some(gamma_value),
    }
}

/// Uniform in `[0, 1)` from exactly one 64-bit draw (53 bits of mantissa).
pub(super) fn unit(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn uniform(rng: &mut impl Rng, [lo, hi]: [f64; 2]) -> f64 {
    lo + (hi - lo) * unit(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_do_not_depend_on_which_ops_fire() {
        let base = AugmentConfig::default();
        let mut changed = base.clone();
        changed.rotation.p = 1.0;
        changed.elastic.p = 0.0;
        changed.noise.p = 1.0;
        for seed in 0..20 {
            let (mut a, mut b) = (
                ChaCha8Rng::seed_from_u64(seed),
                ChaCha8Rng::seed_from_u64(seed),
            );
            let (pa, pb) = (draw(&base, &mut a), draw(&changed, &mut b));
            // Ops whose probability is unchanged make the same decisions with the same values.
            assert_eq!(pa.crop_scale, pb.crop_scale);
            assert_eq!(pa.flip_horizontal, pb.flip_horizontal);
            assert_eq!(pa.clahe, pb.clahe);
            assert_eq!(pa.gamma, pb.gamma);
            assert_eq!(pb.elastic, None);
            // The caller's stream continues at the same place.
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn draws_honour_ranges() {
        let mut config = AugmentConfig::default().all_on();
        config.gamma.range = [0.8, 0.9];
        config.rotation.max_degrees = 10.0;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let plan = draw(&config, &mut rng);
            let gamma = plan.gamma.expect("gamma fires at p = 1");
            assert!((0.8..0.9).contains(&gamma), "{gamma}");
            let angle = plan.rotation.expect("rotation fires at p = 1");
            assert!(angle.abs() <= 10f64.to_radians());
            let crop = plan.crop_scale.expect("crop fires at p = 1");
            assert!((0.7..1.4).contains(&crop.zoom));
        }
    }
}
