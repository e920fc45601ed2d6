//! The segmentation loss on per-class logits: (focal) binary cross-entropy plus soft Dice, each
//! class a sigmoid channel. Written with tensor ops only, so autodiff differentiates it.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use super::config::LossConfig;

/// Added to the Dice numerator and denominator: a class absent from the batch and predicted
/// absent scores a loss of 0 instead of 0/0, and the gradient stays finite.
const DICE_SMOOTH: f64 = 1.0;

/// Per-pixel binary cross-entropy of `logits` against `targets` in {0,1}, in the stable form
/// max(x,0) − x·t + ln(1 + e^−|x|), scaled by (1 − p_t)^γ when γ > 0 (focal loss).
fn cross_entropy(logits: Tensor<4>, targets: Tensor<4>, gamma: f64) -> Tensor<4> {
    let stable = logits.clone().clamp_min(0.0) - logits.clone() * targets.clone()
        + logits.clone().abs().neg().exp().log1p();
    if gamma <= 0.0 {
        return stable;
    }
    let p = sigmoid(logits);
    // p_t: the probability given to the true label; 1 − p_t = p + t − 2pt.
    let miss = p.clone() + targets.clone() - p * targets * 2.0;
    stable * miss.powf_scalar(gamma)
}

/// 1 − soft Dice per class over the whole batch (SMP's multilabel mode), averaged over classes.
fn dice(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<1> {
    let p = sigmoid(logits);
    let [_, classes, _, _] = p.dims();
    let overlap = (p.clone() * targets.clone()).sum_dims(&[0, 2, 3]);
    let total = (p + targets).sum_dims(&[0, 2, 3]);
    let score = (overlap * 2.0 + DICE_SMOOTH) / (total + DICE_SMOOTH);
    (score.neg() + 1.0).reshape([classes]).mean()
}

/// `bce · mean cross-entropy + dice · Dice loss`, a one-element tensor.
pub fn segmentation_loss(logits: Tensor<4>, targets: Tensor<4>, weights: &LossConfig) -> Tensor<1> {
    let device = logits.device();
    let mut total = Tensor::<1>::zeros([1], &device);
    if weights.bce > 0.0 {
        total = total
            + cross_entropy(logits.clone(), targets.clone(), weights.focal_gamma).mean()
                * weights.bce;
    }
    if weights.dice > 0.0 {
        total = total + dice(logits, targets) * weights.dice;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn tensor(values: &[f32], shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &Device::flex())
    }

    fn value(t: Tensor<1>) -> f64 {
        f64::from(t.into_scalar::<f32>())
    }

    const ONLY_BCE: LossConfig = LossConfig {
        bce: 1.0,
        dice: 0.0,
        focal_gamma: 0.0,
    };
    const ONLY_DICE: LossConfig = LossConfig {
        bce: 0.0,
        dice: 1.0,
        focal_gamma: 0.0,
    };

    #[test]
    fn cross_entropy_matches_the_formula() {
        // Logit 0 → p = 0.5 → −ln 0.5 whatever the target; logit 2 against target 1 → −ln σ(2).
        let logits = tensor(&[0.0, 0.0, 2.0, -3.0], [1, 1, 2, 2]);
        let targets = tensor(&[1.0, 0.0, 1.0, 1.0], [1, 1, 2, 2]);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = (2.0 * 2f64.ln() - sig(2.0).ln() - sig(-3.0).ln()) / 4.0;
        let got = value(segmentation_loss(logits, targets, &ONLY_BCE));
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn focal_down_weights_confident_pixels() {
        let logits = tensor(&[4.0, -4.0, 0.0, 0.0], [1, 1, 2, 2]);
        let targets = tensor(&[1.0, 0.0, 1.0, 0.0], [1, 1, 2, 2]);
        let focal = LossConfig {
            focal_gamma: 2.0,
            ..ONLY_BCE
        };
        let sig4 = 1.0 / (1.0 + (-4f64).exp());
        // Confident right pixels weigh (1 − σ(4))², undecided ones 0.5².
        let expected = (2.0 * -sig4.ln() * (1.0 - sig4).powi(2) + 2.0 * 2f64.ln() * 0.25) / 4.0;
        let got = value(segmentation_loss(logits, targets, &focal));
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    #[test]
    fn perfect_prediction_gives_dice_loss_near_zero_and_wrong_one_near_one() {
        // Two classes: class 0 half the pixels, class 1 absent (and predicted absent).
        let truth = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let targets = tensor(&truth, [1, 2, 2, 2]);
        let perfect: Vec<f32> = truth
            .iter()
            .map(|&t| if t > 0.5 { 30.0 } else { -30.0 })
            .collect();
        let good = value(segmentation_loss(
            tensor(&perfect, [1, 2, 2, 2]),
            targets.clone(),
            &ONLY_DICE,
        ));
        assert!(good < 1e-6, "{good}");
        let inverted: Vec<f32> = perfect.iter().map(|x| -x).collect();
        let bad = value(segmentation_loss(
            tensor(&inverted, [1, 2, 2, 2]),
            targets,
            &ONLY_DICE,
        ));
        // Class 0: 1 − 1/(2+2+1)... every pixel wrong: score (0+1)/(2+2+1) → loss 0.8;
        // class 1: 4 false positives, score 1/(4+1) → loss 0.8.
        assert!((bad - 0.8).abs() < 1e-5, "{bad}");
    }

    #[test]
    fn weights_add_the_two_terms() {
        let logits = tensor(&[0.5, -1.0, 2.0, 0.0], [1, 1, 2, 2]);
        let targets = tensor(&[1.0, 0.0, 0.0, 1.0], [1, 1, 2, 2]);
        let both = LossConfig {
            bce: 0.3,
            dice: 2.0,
            focal_gamma: 0.0,
        };
        let sum =
            0.3 * value(segmentation_loss(
                logits.clone(),
                targets.clone(),
                &ONLY_BCE,
            )) + 2.0
                * value(segmentation_loss(
                    logits.clone(),
                    targets.clone(),
                    &ONLY_DICE,
                ));
        assert!((value(segmentation_loss(logits, targets, &both)) - sum).abs() < 1e-5);
    }
}
