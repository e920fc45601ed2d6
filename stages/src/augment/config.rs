//! What the augmentation may do and how likely each op is: `[params]` of the augment-cache stage.
//! Defaults follow nnU-Net v2's 2D training transforms, plus elastic and CLAHE from the proposal.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Every augmentation op, in the order they are applied (geometry first, as one resampling, then the
/// intensity ops). Each op fires independently with its probability `p`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    pub rotation: Rotation,
    pub crop_scale: CropScale,
    pub flip_horizontal: Flip,
    pub flip_vertical: Flip,
    pub elastic: Elastic,
    pub clahe: Clahe,
    pub noise: Noise,
    pub blur: Blur,
    pub brightness: Brightness,
    pub contrast: Contrast,
    pub gamma: Gamma,
}

/// Rotation about the image centre by an angle drawn uniformly from ±`max_degrees`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rotation {
    pub p: f64,
    pub max_degrees: f64,
}

/// Zoom by a factor drawn uniformly from `scale` (above 1 magnifies, below 1 shrinks and pads with
/// zeros) about a random centre, so the result is a random crop of the zoomed image, as
/// RandomResizedCrop or nnU-Net's scaling with a random patch position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropScale {
    pub p: f64,
    pub scale: [f64; 2],
}

/// A mirror along one axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flip {
    pub p: f64,
}

/// Elastic deformation as Simard et al., Albumentations and nnU-Net define it: displacements of
/// `alpha` × (uniform noise in ±1 smoothed by a Gaussian of `sigma` pixels), in pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Elastic {
    pub p: f64,
    pub alpha: f64,
    pub sigma: f64,
}

/// Contrast-limited adaptive histogram equalisation on a `tiles`×`tiles` grid; the clip limit is
/// drawn uniformly from `clip_limit` (OpenCV's units: a multiple of the mean bin count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clahe {
    pub p: f64,
    pub clip_limit: [f64; 2],
    pub tiles: usize,
}

/// Additive Gaussian noise whose standard deviation is drawn from `sigma` (intensity units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Noise {
    pub p: f64,
    pub sigma: [f64; 2],
}

/// Gaussian blur whose standard deviation is drawn from `sigma` (pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Blur {
    pub p: f64,
    pub sigma: [f64; 2],
}

/// Multiplies intensities by a factor drawn from `range`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Brightness {
    pub p: f64,
    pub range: [f64; 2],
}

/// Scales intensities about the channel mean by a factor drawn from `range`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Contrast {
    pub p: f64,
    pub range: [f64; 2],
}

/// Raises intensities to a power drawn from `range` (above 1 darkens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gamma {
    pub p: f64,
    pub range: [f64; 2],
}

// nnU-Net v2 (nnUNetTrainer.get_training_transforms, 2D, square patch) is the source of every
// probability and range below unless a comment says otherwise.
impl Default for Rotation {
    fn default() -> Self {
        // nnU-Net rotates 2D patches with an aspect ratio under 1.5 by up to ±180°.
        Self {
            p: 0.2,
            max_degrees: 180.0,
        }
    }
}

impl Default for CropScale {
    fn default() -> Self {
        Self {
            p: 0.2,
            scale: [0.7, 1.4],
        }
    }
}

impl Default for Flip {
    fn default() -> Self {
        // nnU-Net mirrors each allowed axis with probability 0.5.
        Self { p: 0.5 }
    }
}

impl Default for Elastic {
    fn default() -> Self {
        // nnU-Net v2 turned elastic deformation off; v1 used it in 2D with p 0.2, alpha 0…200 and
        // sigma 9…13. The proposal asks for it, so it keeps v1's probability at the middle of v1's
        // ranges: displacements of about 1.5 px (standard deviation), smooth over about 11 px.
        Self {
            p: 0.2,
            alpha: 100.0,
            sigma: 11.0,
        }
    }
}

impl Default for Clahe {
    fn default() -> Self {
        // Not in nnU-Net; the proposal's op with Albumentations' defaults (clip 1…4, 8×8 tiles) at
        // the probability nnU-Net gives its other moderate ops.
        Self {
            p: 0.2,
            clip_limit: [1.0, 4.0],
            tiles: 8,
        }
    }
}

impl Default for Noise {
    fn default() -> Self {
        // nnU-Net draws a variance of 0…0.1 on z-scored data, a standard deviation of up to about
        // 0.3 of the data's spread; windowed lung CT in [0, 1] spreads about 0.15…0.3, hence 0.05.
        Self {
            p: 0.1,
            sigma: [0.0, 0.05],
        }
    }
}

impl Default for Blur {
    fn default() -> Self {
        Self {
            p: 0.2,
            sigma: [0.5, 1.0],
        }
    }
}

impl Default for Brightness {
    fn default() -> Self {
        Self {
            p: 0.15,
            range: [0.75, 1.25],
        }
    }
}

impl Default for Contrast {
    fn default() -> Self {
        Self {
            p: 0.15,
            range: [0.75, 1.25],
        }
    }
}

impl Default for Gamma {
    fn default() -> Self {
        // nnU-Net's non-inverted gamma; its inverted variant (p 0.1) is left out.
        Self {
            p: 0.3,
            range: [0.7, 1.5],
        }
    }
}

/// Upper bounds that keep the work per slice bounded (blur kernels of ±3σ, CLAHE tables) and catch
/// values typed in the wrong unit, such as Albumentations' `gamma_limit` (70, 150) meant as
/// 0.7…1.5.
const MAX_BLUR_SIGMA: f64 = 20.0;
const MAX_GAMMA: f64 = 10.0;
const MAX_ELASTIC_SIGMA: f64 = 1000.0;
const MAX_TILES: usize = 64;
const MAX_FACTOR: f64 = 100.0;

impl AugmentConfig {
    /// Rejects probabilities outside 0…1, inverted or non-finite ranges and values an op cannot
    /// honour, naming the field (`elastic.sigma`).
    pub fn validate(&self) -> Result<()> {
        for (field, p) in self.probabilities() {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::invalid_param(
                    field,
                    format!("expected a probability in 0…1, got {p}"),
                ));
            }
        }
        let r = &self.rotation;
        in_range("rotation.max_degrees", r.max_degrees, 0.0, 180.0)?;
        let [lo, _] = range("crop_scale.scale", self.crop_scale.scale, 0.0, MAX_FACTOR)?;
        positive("crop_scale.scale", lo)?;
        let e = &self.elastic;
        in_range("elastic.alpha", e.alpha, 0.0, f64::MAX)?;
        in_range("elastic.sigma", e.sigma, 0.0, MAX_ELASTIC_SIGMA)?;
        positive("elastic.sigma", e.sigma)?;
        range("clahe.clip_limit", self.clahe.clip_limit, 1.0, f64::MAX)?;
        if !(1..=MAX_TILES).contains(&self.clahe.tiles) {
            return Err(Error::invalid_param(
                "clahe.tiles",
                format!("expected 1…{MAX_TILES}, got {}", self.clahe.tiles),
            ));
        }
        range("noise.sigma", self.noise.sigma, 0.0, 1.0)?;
        range("blur.sigma", self.blur.sigma, 0.0, MAX_BLUR_SIGMA)?;
        range("brightness.range", self.brightness.range, 0.0, MAX_FACTOR)?;
        range("contrast.range", self.contrast.range, 0.0, MAX_FACTOR)?;
        let [lo, _] = range("gamma.range", self.gamma.range, 0.0, MAX_GAMMA)?;
        positive("gamma.range", lo)?;
        Ok(())
    }

    /// The same ranges with every op certain to fire, for benchmarks and tests.
    pub fn all_on(&self) -> Self {
        let mut config = self.clone();
        for p in config.probabilities_mut() {
            *p = 1.0;
        }
        config
    }

    /// The same ranges with no op firing; a base for configs that switch on a few ops.
    pub fn all_off(&self) -> Self {
        let mut config = self.clone();
        for p in config.probabilities_mut() {
            *p = 0.0;
        }
        config
    }

    /// Each op's probability with its field name, in application order.
    pub(super) fn probabilities(&self) -> [(&'static str, f64); OPS] {
        [
            ("rotation.p", self.rotation.p),
            ("crop_scale.p", self.crop_scale.p),
            ("flip_horizontal.p", self.flip_horizontal.p),
            ("flip_vertical.p", self.flip_vertical.p),
            ("elastic.p", self.elastic.p),
            ("clahe.p", self.clahe.p),
            ("noise.p", self.noise.p),
            ("blur.p", self.blur.p),
            ("brightness.p", self.brightness.p),
            ("contrast.p", self.contrast.p),
            ("gamma.p", self.gamma.p),
        ]
    }

    fn probabilities_mut(&mut self) -> [&mut f64; OPS] {
        [
            &mut self.rotation.p,
            &mut self.crop_scale.p,
            &mut self.flip_horizontal.p,
            &mut self.flip_vertical.p,
            &mut self.elastic.p,
            &mut self.clahe.p,
            &mut self.noise.p,
            &mut self.blur.p,
            &mut self.brightness.p,
            &mut self.contrast.p,
            &mut self.gamma.p,
        ]
    }
}

/// The number of ops; the draw order in `plan.rs` depends on it.
pub(super) const OPS: usize = 11;

fn in_range(field: &'static str, value: f64, lo: f64, hi: f64) -> Result<f64> {
    // `contains` is false for NaN, so NaN is rejected here too.
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else if hi == f64::MAX {
        Err(Error::invalid_param(
            field,
            format!("expected a finite number ≥ {lo}, got {value}"),
        ))
    } else {
        Err(Error::invalid_param(
            field,
            format!("expected {lo}…{hi}, got {value}"),
        ))
    }
}

fn positive(field: &'static str, value: f64) -> Result<()> {
    if value > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid_param(
            field,
            format!("expected a number > 0, got {value}"),
        ))
    }
}

/// A `[low, high]` range inside `lo…hi` with `low ≤ high`.
fn range(field: &'static str, [low, high]: [f64; 2], lo: f64, hi: f64) -> Result<[f64; 2]> {
    in_range(field, low, lo, hi)?;
    in_range(field, high, lo, hi)?;
    if low > high {
        return Err(Error::invalid_param(
            field,
            format!("expected [low, high] with low ≤ high, got [{low}, {high}]"),
        ));
    }
    Ok([low, high])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(config: &AugmentConfig) -> &'static str {
        match config.validate() {
            Err(Error::InvalidParam { field, .. }) => field,
            other => panic!("expected InvalidParam, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_all_on_are_valid() {
        let config = AugmentConfig::default();
        config.validate().expect("defaults are valid");
        let on = config.all_on();
        on.validate().expect("all-on is valid");
        assert!(on.probabilities().iter().all(|&(_, p)| p == 1.0));
        assert!(
            config
                .all_off()
                .probabilities()
                .iter()
                .all(|&(_, p)| p == 0.0)
        );
        assert_eq!(on.elastic.alpha, config.elastic.alpha);
        assert_eq!(on.gamma.range, config.gamma.range);
    }

    #[test]
    fn validate_names_the_bad_field() {
        let base = AugmentConfig::default();
        type Edit = Box<dyn Fn(&mut AugmentConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.rotation.p = -0.1), "rotation.p"),
            (Box::new(|c| c.gamma.p = 1.5), "gamma.p"),
            (Box::new(|c| c.blur.p = f64::NAN), "blur.p"),
            (
                Box::new(|c| c.rotation.max_degrees = 270.0),
                "rotation.max_degrees",
            ),
            (
                Box::new(|c| c.crop_scale.scale = [1.4, 0.7]),
                "crop_scale.scale",
            ),
            (
                Box::new(|c| c.crop_scale.scale = [0.0, 1.0]),
                "crop_scale.scale",
            ),
            (Box::new(|c| c.elastic.sigma = 0.0), "elastic.sigma"),
            (Box::new(|c| c.elastic.sigma = -3.0), "elastic.sigma"),
            (
                Box::new(|c| c.elastic.alpha = f64::INFINITY),
                "elastic.alpha",
            ),
            (Box::new(|c| c.clahe.tiles = 0), "clahe.tiles"),
            (
                Box::new(|c| c.clahe.clip_limit = [0.5, 2.0]),
                "clahe.clip_limit",
            ),
            (
                Box::new(|c| c.clahe.clip_limit = [4.0, 2.0]),
                "clahe.clip_limit",
            ),
            (Box::new(|c| c.noise.sigma = [-0.1, 0.1]), "noise.sigma"),
            (Box::new(|c| c.blur.sigma = [1.0, 0.5]), "blur.sigma"),
            (
                Box::new(|c| c.brightness.range = [1.25, 0.75]),
                "brightness.range",
            ),
            (
                Box::new(|c| c.contrast.range = [-1.0, 1.0]),
                "contrast.range",
            ),
            (Box::new(|c| c.gamma.range = [0.0, 1.5]), "gamma.range"),
            (Box::new(|c| c.gamma.range = [70.0, 150.0]), "gamma.range"),
        ];
        for (edit, field) in cases {
            let mut config = base.clone();
            edit(&mut config);
            assert_eq!(rejected(&config), field);
        }
    }

    #[test]
    fn deserializes_partial_params_and_rejects_unknown_fields() {
        let config: AugmentConfig =
            serde_json::from_str(r#"{"gamma": {"p": 1.0}, "clahe": {"tiles": 4}}"#)
                .expect("partial params parse");
        assert_eq!(config.gamma.p, 1.0);
        // A partial op keeps that op's own defaults, not another op's.
        assert_eq!(config.gamma.range, Gamma::default().range);
        assert_eq!(config.clahe.tiles, 4);
        assert_eq!(config.clahe.p, Clahe::default().p);
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"gama": {"p": 1.0}}"#).is_err());
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"gamma": {"q": 1.0}}"#).is_err());
    }
}
