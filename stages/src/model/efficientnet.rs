//! EfficientNet-B0 and EfficientNet-Lite0: the encoder trunk (stem and 16 MBConv blocks) the
//! U-Net uses, and the ImageNet classifier around it, which pretrained checkpoints come as.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::blocks::{Activation, ConvBnAct, ConvBnActConfig, MbConv, MbConvConfig, conv_padding};
use super::config::Flavour;

/// Width of the stem convolution (never scaled in B0 or Lite0).
pub const STEM_CHANNELS: usize = 32;
/// Width of the 1x1 head convolution before the classifier.
pub const HEAD_CHANNELS: usize = 1280;
/// Number of MBConv blocks in B0 and Lite0.
pub const NUM_BLOCKS: usize = 16;

/// One stage of identical blocks; only its first block strides and changes the width.
#[derive(Clone, Copy, Debug)]
struct Stage {
    expand_ratio: usize,
    kernel: usize,
    stride: usize,
    repeats: usize,
    out_channels: usize,
}

const fn stage(
    expand_ratio: usize,
    kernel: usize,
    stride: usize,
    repeats: usize,
    out_channels: usize,
) -> Stage {
    Stage {
        expand_ratio,
        kernel,
        stride,
        repeats,
        out_channels,
    }
}

/// B0's stages, which Lite0 shares (width and depth multipliers 1.0).
const STAGES: [Stage; 7] = [
    stage(1, 3, 1, 1, 16),
    stage(6, 3, 2, 2, 24),
    stage(6, 5, 2, 2, 40),
    stage(6, 3, 2, 3, 80),
    stage(6, 5, 1, 3, 112),
    stage(6, 5, 2, 4, 192),
    stage(6, 3, 1, 1, 320),
];

/// Index of the last block of each of the 7 stages (torchvision's `features[1..=7]` outputs).
pub const STAGE_LAST_BLOCKS: [usize; 7] = [0, 2, 4, 7, 10, 14, 15];

/// Which EfficientNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EfficientNetVariant {
    /// SiLU and squeeze-excitation.
    B0,
    /// ReLU6 and no squeeze-excitation.
    Lite0,
}

impl EfficientNetVariant {
    fn activation(self) -> Activation {
        match self {
            Self::B0 => Activation::Silu,
            Self::Lite0 => Activation::Relu6,
        }
    }

    /// The blocks whose outputs are the U-Net skips at 1/4, 1/8, 1/16 and 1/32 of the input.
    /// B0 follows SMP's `efficientnet-b0` encoder, which takes its 1/16 skip after block 8, the
    /// *first* 112-channel block, not the stage's last (10); a decoder trained on SMP's features
    /// needs the same tap. Lite0 uses the stage ends, like timm's feature extractor.
    pub fn feature_blocks(self) -> [usize; 4] {
        match self {
            Self::B0 => [2, 4, 8, 15],
            Self::Lite0 => [2, 4, 10, 15],
        }
    }
}

/// The channel counts of the U-Net features at 1/2 (the stem) … 1/32.
pub fn feature_channels(variant: EfficientNetVariant) -> [usize; 5] {
    let outs = block_out_channels();
    let taps = variant.feature_blocks();
    [
        STEM_CHANNELS,
        outs[taps[0]],
        outs[taps[1]],
        outs[taps[2]],
        outs[taps[3]],
    ]
}

fn block_out_channels() -> Vec<usize> {
    STAGES
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.out_channels, s.repeats))
        .collect()
}

/// The shape of an EfficientNet trunk.
#[derive(Clone, Debug)]
pub struct EfficientNetConfig {
    pub variant: EfficientNetVariant,
    pub flavour: Flavour,
    pub in_channels: usize,
    /// Stochastic depth rate of the last block; block `i` gets `rate · i / 16`.
    pub drop_connect_rate: f64,
    /// How many of the 16 blocks to build: a shallow U-Net never runs the deeper ones.
    pub blocks: usize,
}

impl EfficientNetConfig {
    /// All 16 blocks of `variant`, with 3 input channels and stochastic depth 0.2.
    pub fn new(variant: EfficientNetVariant, flavour: Flavour) -> Self {
        Self {
            variant,
            flavour,
            in_channels: 3,
            drop_connect_rate: 0.2,
            blocks: NUM_BLOCKS,
        }
    }

    fn block_configs(&self) -> Vec<MbConvConfig> {
        let mut configs = Vec::with_capacity(NUM_BLOCKS);
        let mut in_channels = STEM_CHANNELS;
        for stage in STAGES {
            for repeat in 0..stage.repeats {
                let index = configs.len();
                configs.push(MbConvConfig {
                    in_channels,
                    out_channels: stage.out_channels,
                    expand_ratio: stage.expand_ratio,
                    kernel: stage.kernel,
                    stride: if repeat == 0 { stage.stride } else { 1 },
                    squeeze_excitation: self.variant == EfficientNetVariant::B0,
                    activation: self.variant.activation(),
                    flavour: self.flavour,
                    // Scaled by the position among all 16 blocks, also in a truncated trunk,
                    // so a block keeps its rate whatever the U-Net depth.
                    drop_rate: self.drop_connect_rate * index as f64 / NUM_BLOCKS as f64,
                });
                in_channels = stage.out_channels;
            }
        }
        configs.truncate(self.blocks);
        configs
    }

    pub fn init(&self, device: &Device) -> EfficientNetEncoder {
        let stem = ConvBnActConfig {
            in_channels: self.in_channels,
            out_channels: STEM_CHANNELS,
            kernel: 3,
            stride: 2,
            groups: 1,
            padding: conv_padding(self.flavour, 3),
            bn_epsilon: self.flavour.bn_epsilon(),
            bn_momentum: self.flavour.bn_momentum(),
            activation: self.variant.activation(),
        }
        .init(device);
        let blocks = self
            .block_configs()
            .iter()
            .map(|config| config.init(device))
            .collect();
        EfficientNetEncoder { stem, blocks }
    }

    /// The whole ImageNet-style classifier: all 16 blocks, the 1x1 head, pooling, dropout 0.2 and
    /// a linear layer to `classes` logits.
    pub fn init_classifier(&self, classes: usize, device: &Device) -> EfficientNet {
        let trunk = Self {
            blocks: NUM_BLOCKS,
            ..self.clone()
        };
        let head = ConvBnActConfig {
            bn_epsilon: self.flavour.bn_epsilon(),
            bn_momentum: self.flavour.bn_momentum(),
            activation: self.variant.activation(),
            ..ConvBnActConfig::new(STAGES[STAGES.len() - 1].out_channels, HEAD_CHANNELS, 1)
        }
        .init(device);
        EfficientNet {
            encoder: trunk.init(device),
            head,
            dropout: DropoutConfig::new(0.2).init(),
            classifier: LinearConfig::new(HEAD_CHANNELS, classes).init(device),
        }
    }
}

/// The EfficientNet trunk: stem and MBConv blocks, without head or classifier.
#[derive(Module, Debug)]
pub struct EfficientNetEncoder {
    pub stem: ConvBnAct,
    pub blocks: Vec<MbConv>,
}

impl EfficientNetEncoder {
    /// The number of image channels the stem takes.
    pub fn in_channels(&self) -> usize {
        self.stem.conv.weight.lazy_shape()[1]
    }

    /// The stem's output and every block's output, in order.
    pub fn forward_blocks(&self, x: Tensor<4>) -> (Tensor<4>, Vec<Tensor<4>>) {
        let stem = self.stem.forward(x);
        let mut outputs: Vec<Tensor<4>> = Vec::with_capacity(self.blocks.len());
        let mut h = stem.clone();
        for block in &self.blocks {
            h = block.forward(h);
            outputs.push(h.clone());
        }
        (stem, outputs)
    }

    /// The stem's output followed by the outputs of the blocks in `taps` (ascending), running
    /// only as many blocks as the deepest tap needs.
    pub fn features(&self, x: Tensor<4>, taps: &[usize]) -> Vec<Tensor<4>> {
        let mut h = self.stem.forward(x);
        let mut features = vec![h.clone()];
        let last = taps.last().copied().unwrap_or(0);
        for (index, block) in self.blocks.iter().enumerate().take(last + 1) {
            h = block.forward(h);
            if taps.contains(&index) {
                features.push(h.clone());
            }
        }
        features
    }
}

/// Every intermediate of an [`EfficientNet`] pass, for parity tests and inspection.
#[derive(Debug, Clone)]
pub struct EfficientNetTrace {
    pub stem: Tensor<4>,
    pub blocks: Vec<Tensor<4>>,
    /// The final feature map, after the head conv-BN-activation.
    pub head: Tensor<4>,
    /// `head` averaged over height and width, `[N, 1280]`.
    pub pooled: Tensor<2>,
    pub logits: Tensor<2>,
}

/// The EfficientNet classifier: trunk, 1x1 head, global average pool, dropout, linear.
#[derive(Module, Debug)]
pub struct EfficientNet {
    pub encoder: EfficientNetEncoder,
    pub head: ConvBnAct,
    pub dropout: Dropout,
    pub classifier: Linear,
}

impl EfficientNet {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.trace(x).logits
    }

    pub fn trace(&self, x: Tensor<4>) -> EfficientNetTrace {
        let (stem, blocks) = self.encoder.forward_blocks(x);
        let last = blocks.last().cloned().unwrap_or_else(|| stem.clone());
        let head = self.head.forward(last);
        let pooled: Tensor<2> = head.clone().mean_dim(3).mean_dim(2).flatten(1, 3);
        let logits = self
            .classifier
            .forward(self.dropout.forward(pooled.clone()));
        EfficientNetTrace {
            stem,
            blocks,
            head,
            pooled,
            logits,
        }
    }
}
