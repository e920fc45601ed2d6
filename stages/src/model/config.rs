//! The U-Net's hyper-parameters as the user writes them in a stage's TOML params: which encoder,
//! which padding/normalisation flavour, how deep, how wide, how many classes.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The U-Net decoder's widths when the user names none, deepest block first (SMP's default).
pub const DEFAULT_DECODER_CHANNELS: [usize; 5] = [256, 128, 64, 32, 16];

/// The network that turns a slice into the multi-scale features the decoder consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncoderKind {
    /// EfficientNet-B0 (MBConv with squeeze-excitation, SiLU).
    #[serde(rename = "efficientnet-b0")]
    EfficientNetB0,
    /// EfficientNet-Lite0 (same stages as B0, no squeeze-excitation, ReLU6).
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    /// The original U-Net encoder: two 3x3 conv-BN-ReLU per level, then a 2x2 max pool.
    #[serde(rename = "plain")]
    Plain,
}

/// How an EfficientNet pads its convolutions and normalises its activations. Both choices move
/// every output value (a padding mismatch by 10–100 % of the range), so the flavour must be the
/// one the loaded weights were trained with. The plain encoder ignores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flavour {
    /// TensorFlow's `SAME` padding, computed per input size (asymmetric, extra row and column at
    /// the bottom/right, on stride-2 layers of even size), BatchNorm eps 1e-3 and momentum 0.01:
    /// the original TF checkpoints, SMP's `efficientnet-b0` encoder and the Lite0 checkpoint.
    /// (SMP pads with a table computed for 224x224, which equals this on the sizes it accepts,
    /// multiples of 32; on other sizes only the per-size rule is right.)
    #[serde(rename = "tf")]
    Tf,
    /// Symmetric `k/2` padding, BatchNorm eps 1e-5 and momentum 0.1: torchvision's models.
    #[serde(rename = "torchvision")]
    Torchvision,
}

impl Flavour {
    /// BatchNorm epsilon of the encoder.
    pub fn bn_epsilon(self) -> f64 {
        match self {
            Self::Tf => 1e-3,
            Self::Torchvision => 1e-5,
        }
    }

    /// BatchNorm momentum in PyTorch's (and Burn's) convention: the weight of the new batch.
    pub fn bn_momentum(self) -> f64 {
        match self {
            Self::Tf => 0.01,
            Self::Torchvision => 0.1,
        }
    }
}

/// Everything that decides the U-Net's shape. Serialised next to trained weights, so the same
/// network can be rebuilt to load them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnetConfig {
    pub encoder: EncoderKind,
    pub flavour: Flavour,
    /// Number of downsampling stages, 3..=5; the deepest feature is at 1/2^depth of the input.
    pub encoder_depth: usize,
    /// One width per decoder block, deepest first; exactly `encoder_depth` entries. When absent,
    /// the last `encoder_depth` entries of (256, 128, 64, 32, 16), so the last block stays 16 wide.
    pub decoder_channels: Option<Vec<usize>>,
    /// 1 (a CT slice) or 3 (RGB, or three HU windows).
    pub in_channels: usize,
    /// Number of output logits per pixel.
    pub classes: usize,
    /// Stochastic depth ("drop connect") rate of the EfficientNet encoders: block `i` of 16 drops
    /// its residual branch with probability `rate · i / 16`, in training only.
    pub drop_connect_rate: f64,
    /// Width of the plain encoder's first level; each deeper level doubles it (32 gives the
    /// original U-Net's 32, 64, 128, 256, 512). The EfficientNet encoders ignore it.
    #[serde(skip_serializing_if = "is_default_plain_width")]
    pub plain_width: usize,
}

/// The plain encoder's first width when the user names none (the original U-Net's).
pub const DEFAULT_PLAIN_WIDTH: usize = 32;

// Left out when default, so configs (and the keys and bundles made from them) written before the
// field existed stay byte for byte the same.
fn is_default_plain_width(width: &usize) -> bool {
    *width == DEFAULT_PLAIN_WIDTH
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::EfficientNetB0,
            flavour: Flavour::Tf,
            encoder_depth: 5,
            decoder_channels: None,
            in_channels: 1,
            classes: 2,
            drop_connect_rate: 0.2,
            plain_width: DEFAULT_PLAIN_WIDTH,
        }
    }
}

impl UnetConfig {
    /// Checks every field's range, naming the first one that is out of it.
    pub fn validate(&self) -> Result<()> {
        if !(3..=5).contains(&self.encoder_depth) {
            return Err(Error::invalid_param(
                "encoder_depth",
                format!("must be 3, 4 or 5, got {}", self.encoder_depth),
            ));
        }
        if let Some(channels) = &self.decoder_channels {
            if channels.len() != self.encoder_depth {
                return Err(Error::invalid_param(
                    "decoder_channels",
                    format!(
                        "needs one width per decoder block, {} (encoder_depth), got {}",
                        self.encoder_depth,
                        channels.len()
                    ),
                ));
            }
            if channels.contains(&0) {
                return Err(Error::invalid_param(
                    "decoder_channels",
                    "widths must be positive",
                ));
            }
        }
        if self.in_channels != 1 && self.in_channels != 3 {
            return Err(Error::invalid_param(
                "in_channels",
                format!("must be 1 or 3, got {}", self.in_channels),
            ));
        }
        if self.classes == 0 {
            return Err(Error::invalid_param("classes", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.drop_connect_rate) {
            return Err(Error::invalid_param(
                "drop_connect_rate",
                format!("must be in [0, 1), got {}", self.drop_connect_rate),
            ));
        }
        if !(1..=256).contains(&self.plain_width) {
            return Err(Error::invalid_param(
                "plain_width",
                format!("must be 1…256, got {}", self.plain_width),
            ));
        }
        Ok(())
    }

    /// The plain encoder's widths, shallowest level first: `plain_width` doubled per level.
    pub fn plain_channels(&self) -> Vec<usize> {
        (0..self.encoder_depth)
            .map(|level| self.plain_width << level)
            .collect()
    }

    /// The decoder widths, deepest block first, with the default filled in.
    pub fn decoder_widths(&self) -> Vec<usize> {
        match &self.decoder_channels {
            Some(channels) => channels.clone(),
            None => DEFAULT_DECODER_CHANNELS[DEFAULT_DECODER_CHANNELS.len() - self.encoder_depth..]
                .to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stage_params_and_fills_defaults() {
        let config: UnetConfig = serde_json::from_str(
            r#"{"encoder": "efficientnet-lite0", "flavour": "torchvision", "encoder_depth": 4}"#,
        )
        .expect("valid json");
        assert_eq!(config.encoder, EncoderKind::EfficientNetLite0);
        assert_eq!(config.flavour, Flavour::Torchvision);
        assert_eq!(config.decoder_widths(), [128, 64, 32, 16]);
        assert_eq!(config.in_channels, 1);
        config.validate().expect("valid");
    }

    #[test]
    fn rejects_unknown_fields_and_out_of_range_values() {
        assert!(serde_json::from_str::<UnetConfig>(r#"{"encoder_dept": 4}"#).is_err());
        assert!(serde_json::from_str::<UnetConfig>(r#"{"encoder": "resnet34"}"#).is_err());
        let bad = [
            UnetConfig {
                encoder_depth: 6,
                ..UnetConfig::default()
            },
            UnetConfig {
                decoder_channels: Some(vec![64, 32]),
                ..UnetConfig::default()
            },
            UnetConfig {
                in_channels: 2,
                ..UnetConfig::default()
            },
            UnetConfig {
                classes: 0,
                ..UnetConfig::default()
            },
            UnetConfig {
                drop_connect_rate: 1.0,
                ..UnetConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(Error::InvalidParam { .. })),
                "{config:?}"
            );
        }
    }
}
