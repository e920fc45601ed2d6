//! The non-linearities after a normalisation, as tensor operations (any device) and as the
//! scalar functions the fused CPU kernels apply element by element.

use burn::tensor::{Tensor, activation};

/// The non-linearity after a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// No activation: MBConv's linear bottleneck.
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`: EfficientNet-Lite, which was designed for int8 inference.
    Relu6,
    /// `x · sigmoid(x)`, also called swish: EfficientNet-B0.
    Silu,
}

impl Activation {
    /// The activation as Burn tensor operations.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Identity => x,
            Self::Relu => activation::relu(x),
            Self::Relu6 => activation::relu6(x),
            Self::Silu => activation::silu(x),
        }
    }
}

/// `e^x` without a library call, so a loop over it vectorises: range reduction to
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r` (relative error below
/// 2e-7 on that interval; Cephes' `expf` coefficients) and `2^n` built in the exponent bits.
/// Inputs are clamped to `[-87.3, 88]`, where `2^n` stays a normal f32; no FMA, so the result is
/// the same on every x86-64.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest (Cody and Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to the nearest integer, in plain float arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r
        + r * r
            * (0.5
                + r * (1.666_666_5e-1
                    + r * (4.166_579_6e-2
                        + r * (8.333_452e-3 + r * (1.398_2e-3 + r * 1.987_569_1e-4)))));
    // The low bits of `shifted` hold n (offset by the rounding constant's mantissa).
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n_bits + 127) << 23) as u32);
    p * scale
}

/// `1 / (1 + e^-x)` through [`exp`].
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_to_a_few_ulps() {
        let mut worst = 0.0f32;
        for i in -8729..=8799 {
            let x = i as f32 / 100.0 + 0.003;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(200.0).is_finite());
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(30.0) - 1.0).abs() < 1e-7 && sigmoid(-30.0) < 1e-12);
    }
}
