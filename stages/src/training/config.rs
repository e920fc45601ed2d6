//! The `train` stage's params as the user writes them: the U-Net, the optimiser and schedule, the
//! loss weights, early stopping and the device. Saved in the bundle as `config.json`.

use serde::{Deserialize, Serialize};

use super::device::DeviceChoice;
use crate::model::UnetConfig;
use crate::{Error, Result};

/// Where the encoder's initial weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncoderWeights {
    /// Random initialisation.
    #[default]
    None,
    /// ImageNet weights, from the stage's `weights` input (a `pretrained` stage's output).
    Imagenet,
}

/// How the per-pixel loss is put together: `bce · BCE + dice · soft Dice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of binary cross-entropy on the logits.
    pub bce: f64,
    /// Weight of the soft Dice loss (per class over the batch, then averaged).
    pub dice: f64,
    /// Focal exponent γ: each pixel's cross-entropy is scaled by (1 − p_t)^γ, which lowers the
    /// weight of pixels already right. 0 is plain cross-entropy.
    pub focal_gamma: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            bce: 1.0,
            dice: 1.0,
            focal_gamma: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The network (a nested `[params.model]` table). `classes` must be 2: GGO, consolidation.
    pub model: UnetConfig,
    /// `"none"` (random) or `"imagenet"`: then the stage's `weights` input must be wired, for
    /// example to a `pretrained` stage's `weights` output.
    pub encoder_weights: EncoderWeights,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW, reached at the end of the warm-up.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Epochs of linear warm-up from lr/warm-up-steps to `lr` (may be fractional).
    pub warmup_epochs: f64,
    /// The floor the cosine decay ends at, in the last step.
    pub min_lr: f64,
    /// Largest L2 norm of each parameter's gradient (Burn's norm clipping); 0 turns it off.
    pub grad_clip: f64,
    pub loss: LossConfig,
    /// Stop after this many epochs without a better validation score; 0 never stops early.
    pub early_stopping_patience: usize,
    /// Probability above which a pixel counts as lesion when scoring validation.
    pub threshold: f64,
    /// Train on at most this many (shuffled) items per epoch, for quick runs; unset uses all.
    pub max_train_slices_per_epoch: Option<usize>,
    pub device: DeviceChoice,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: UnetConfig::default(),
            encoder_weights: EncoderWeights::None,
            epochs: 40,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 1e-4,
            warmup_epochs: 1.0,
            min_lr: 1e-5,
            grad_clip: 1.0,
            loss: LossConfig::default(),
            early_stopping_patience: 10,
            threshold: 0.5,
            max_train_slices_per_epoch: None,
            device: DeviceChoice::Auto,
        }
    }
}

fn positive_finite(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid_param(
            field,
            format!("expected a positive number, got {value}"),
        ))
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid_param(
            field,
            format!("expected a number ≥ 0, got {value}"),
        ))
    }
}

impl TrainConfig {
    /// Checks every field's range, naming the first one that is out of it.
    pub fn validate(&self) -> Result<()> {
        self.model.validate().map_err(|e| match e {
            Error::InvalidParam { message, field } => {
                Error::invalid_param("model", format!("{field}: {message}"))
            }
            other => other,
        })?;
        if self.model.classes != 2 {
            return Err(Error::invalid_param(
                "model",
                format!(
                    "classes: training predicts GGO and consolidation, so it must be 2, got {}",
                    self.model.classes
                ),
            ));
        }
        if !(1..=100_000).contains(&self.epochs) {
            return Err(Error::invalid_param(
                "epochs",
                format!("expected 1…100000, got {}", self.epochs),
            ));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return Err(Error::invalid_param(
                "batch_size",
                format!("expected 1…4096, got {}", self.batch_size),
            ));
        }
        positive_finite("lr", self.lr)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("warmup_epochs", self.warmup_epochs)?;
        non_negative("min_lr", self.min_lr)?;
        if self.min_lr > self.lr {
            return Err(Error::invalid_param(
                "min_lr",
                format!(
                    "the cosine floor {} is above the peak lr {}",
                    self.min_lr, self.lr
                ),
            ));
        }
        non_negative("grad_clip", self.grad_clip)?;
        non_negative("loss", self.loss.bce)
            .and(non_negative("loss", self.loss.dice))
            .and(non_negative("loss", self.loss.focal_gamma))
            .map_err(|_| {
                Error::invalid_param(
                    "loss",
                    format!(
                        "bce, dice and focal_gamma must be numbers ≥ 0, got {:?}",
                        self.loss
                    ),
                )
            })?;
        if self.loss.bce + self.loss.dice <= 0.0 {
            return Err(Error::invalid_param(
                "loss",
                "at least one of bce and dice needs a positive weight",
            ));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Error::invalid_param(
                "threshold",
                format!(
                    "expected a probability strictly between 0 and 1, got {}",
                    self.threshold
                ),
            ));
        }
        if self.max_train_slices_per_epoch == Some(0) {
            return Err(Error::invalid_param(
                "max_train_slices_per_epoch",
                "expected at least 1 (or leave it unset to use every item)",
            ));
        }
        super::device::check_compiled(self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_model_and_loss_tables() {
        let config: TrainConfig = serde_json::from_str(
            r#"{"model": {"encoder": "plain", "encoder_depth": 3}, "loss": {"dice": 0.5}, "device": "cpu"}"#,
        )
        .unwrap();
        assert_eq!(config.model.encoder_depth, 3);
        assert_eq!(config.loss.dice, 0.5);
        assert_eq!(config.loss.bce, 1.0);
        assert_eq!(config.device, DeviceChoice::Cpu);
        config.validate().unwrap();
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 3}"#).is_err());
    }

    #[test]
    fn rejects_out_of_range_values_naming_the_field() {
        let cases: [(TrainConfig, &str); 6] = [
            (
                TrainConfig {
                    epochs: 0,
                    ..Default::default()
                },
                "params.epochs",
            ),
            (
                TrainConfig {
                    lr: -1.0,
                    ..Default::default()
                },
                "params.lr",
            ),
            (
                TrainConfig {
                    min_lr: 1.0,
                    ..Default::default()
                },
                "params.min_lr",
            ),
            (
                TrainConfig {
                    threshold: 1.0,
                    ..Default::default()
                },
                "params.threshold",
            ),
            (
                TrainConfig {
                    model: UnetConfig {
                        classes: 3,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "params.model",
            ),
            (
                TrainConfig {
                    model: UnetConfig {
                        encoder_depth: 9,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "params.model: encoder_depth",
            ),
        ];
        for (config, field) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.starts_with(field), "{message}");
        }
    }
}
