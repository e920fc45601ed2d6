//! The segmentation network: an encoder (EfficientNet or plain) whose multi-scale features feed
//! SMP's U-Net decoder (upsample, concatenate the skip, two conv-BN-ReLU) and a 3x3 logits head.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::blocks::{ConvBnAct, ConvBnActConfig};
use super::config::{EncoderKind, UnetConfig};
use super::conv::conv2d_module;
use super::efficientnet::{
    EfficientNetConfig, EfficientNetEncoder, EfficientNetVariant, feature_channels,
};
use super::upsample::upsample_cat;
use crate::Result;

/// Two 3x3 conv-BN-ReLU: one level of the original U-Net.
#[derive(Module, Debug)]
pub struct DoubleConv {
    pub conv1: ConvBnAct,
    pub conv2: ConvBnAct,
}

impl DoubleConv {
    pub fn new(in_channels: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            conv1: ConvBnActConfig::new(in_channels, out_channels, 3).init(device),
            conv2: ConvBnActConfig::new(out_channels, out_channels, 3).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv2.forward(self.conv1.forward(x))
    }
}

/// The original U-Net encoder, shaped like SMP's: level `i` convolves at 1/2^(i-1) and max-pools,
/// so its feature is at 1/2^i like every other encoder's.
#[derive(Module, Debug)]
pub struct PlainEncoder {
    pub levels: Vec<DoubleConv>,
    pub pool: MaxPool2d,
}

impl PlainEncoder {
    /// One level per width in `channels`, shallowest first.
    pub fn new(in_channels: usize, channels: &[usize], device: &Device) -> Self {
        let mut levels = Vec::with_capacity(channels.len());
        let mut cin = in_channels;
        for &cout in channels {
            levels.push(DoubleConv::new(cin, cout, device));
            cin = cout;
        }
        Self {
            levels,
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    pub fn features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut h = x;
        let mut features = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            h = self.pool.forward(level.forward(h));
            features.push(h.clone());
        }
        features
    }
}

/// The U-Net's encoder, one of the kinds of [`EncoderKind`].
// One per model, so the size gap between the variants costs nothing, and Burn's `Module` has no
// impl for `Box` to narrow it.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Encoder {
    EfficientNet(EfficientNetEncoder),
    Plain(PlainEncoder),
}

/// One decoder step: nearest-upsample to the skip's size, concatenate the skip, two
/// conv-BN-ReLU.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    pub conv1: ConvBnAct,
    pub conv2: ConvBnAct,
}

impl DecoderBlock {
    pub fn new(in_channels: usize, skip: usize, out_channels: usize, device: &Device) -> Self {
        Self {
            conv1: ConvBnActConfig::new(in_channels + skip, out_channels, 3).init(device),
            conv2: ConvBnActConfig::new(out_channels, out_channels, 3).init(device),
        }
    }

    /// `size` is the skip's height and width (the input's for the last block). Upsampling to a
    /// size rather than by 2 is what lets odd input sizes through, as in SMP 0.6.
    pub fn forward(&self, x: Tensor<4>, skip: Option<Tensor<4>>, size: [usize; 2]) -> Tensor<4> {
        let x = match skip {
            Some(skip) => upsample_cat(x, skip, size),
            None => interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
            ),
        };
        self.conv2.forward(self.conv1.forward(x))
    }
}

/// Everything a U-Net pass computes, for tests and inspection.
#[derive(Debug, Clone)]
pub struct UnetTrace {
    /// SMP's encoder output: the input itself, then one feature per level (1/2 … 1/2^depth).
    pub features: Vec<Tensor<4>>,
    /// Each decoder block's output, deepest first; the last is at input resolution.
    pub decoder: Vec<Tensor<4>>,
    /// `[N, classes, H, W]`.
    pub logits: Tensor<4>,
}

/// U-Net: encoder, decoder blocks (deepest first) and the logits head.
#[derive(Module, Debug)]
pub struct Unet {
    pub encoder: Encoder,
    pub decoder: Vec<DecoderBlock>,
    /// 3x3 conv with bias, last decoder width → classes; no activation.
    pub head: Conv2d,
    /// Which encoder blocks give the features (EfficientNet encoders only).
    #[module(skip)]
    pub feature_blocks: Vec<usize>,
}

impl UnetConfig {
    /// Builds the network with fresh weights after checking the config.
    pub fn init(&self, device: &Device) -> Result<Unet> {
        self.validate()?;
        let depth = self.encoder_depth;
        let (encoder, feature_blocks, channels) = match self.encoder {
            EncoderKind::EfficientNetB0 | EncoderKind::EfficientNetLite0 => {
                let variant = match self.encoder {
                    EncoderKind::EfficientNetB0 => EfficientNetVariant::B0,
                    _ => EfficientNetVariant::Lite0,
                };
                let taps = variant.feature_blocks()[..depth - 1].to_vec();
                let encoder = EfficientNetConfig {
                    in_channels: self.in_channels,
                    drop_connect_rate: self.drop_connect_rate,
                    blocks: taps[taps.len() - 1] + 1,
                    ..EfficientNetConfig::new(variant, self.flavour)
                }
                .init(device);
                let channels = feature_channels(variant)[..depth].to_vec();
                (Encoder::EfficientNet(encoder), taps, channels)
            }
            EncoderKind::Plain => {
                let channels = self.plain_channels();
                (
                    Encoder::Plain(PlainEncoder::new(self.in_channels, &channels, device)),
                    Vec::new(),
                    channels,
                )
            }
        };
        let widths = self.decoder_widths();
        // Block i takes the running tensor (the deepest feature for i = 0) and the skip one level
        // shallower; the last block has no skip and restores the input resolution.
        let mut decoder = Vec::with_capacity(depth);
        let mut cin = channels[depth - 1];
        for (i, &cout) in widths.iter().enumerate() {
            let skip = if i + 1 < depth {
                channels[depth - 2 - i]
            } else {
                0
            };
            decoder.push(DecoderBlock::new(cin, skip, cout, device));
            cin = cout;
        }
        let head = Conv2dConfig::new([cin, self.classes], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        Ok(Unet {
            encoder,
            decoder,
            head,
            feature_blocks,
        })
    }
}

impl Unet {
    /// Logits `[N, classes, H, W]` at the input's resolution, for an input `[N, in_channels, H, W]`
    /// with H and W at least 2^encoder_depth (any size: the decoder upsamples to each skip's
    /// size and TF padding is computed per size).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.trace(x).logits
    }

    /// The encoder's features as SMP returns them: the input, then 1/2 … 1/2^depth.
    pub fn features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut features = vec![x.clone()];
        features.extend(match &self.encoder {
            Encoder::EfficientNet(encoder) => encoder.features(x, &self.feature_blocks),
            Encoder::Plain(encoder) => encoder.features(x),
        });
        features
    }

    pub fn trace(&self, x: Tensor<4>) -> UnetTrace {
        let features = self.features(x);
        let depth = features.len() - 1;
        let mut h = features[depth].clone();
        let mut decoder = Vec::with_capacity(depth);
        for (i, block) in self.decoder.iter().enumerate() {
            // The target level: depth-1-i, down to the input itself (level 0) for the last block.
            let level = depth - 1 - i;
            let [_, _, height, width] = features[level].dims();
            let skip = (level > 0).then(|| features[level].clone());
            h = block.forward(h, skip, [height, width]);
            decoder.push(h.clone());
        }
        let logits = conv2d_module(&self.head, h);
        UnetTrace {
            features,
            decoder,
            logits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Flavour;
    use burn::tensor::Distribution;

    fn logits_shape(config: &UnetConfig, size: [usize; 2]) -> (Vec<[usize; 4]>, [usize; 4]) {
        let device = Device::flex();
        let model = config.init(&device).expect("valid config").valid();
        let input = Tensor::<4>::random(
            [2, config.in_channels, size[0], size[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let trace = model.trace(input);
        let features = trace.features.iter().map(|f| f.dims()).collect();
        (features, trace.logits.dims())
    }

    #[test]
    fn every_encoder_and_depth_gives_logits_at_input_resolution() {
        let encoders = [
            EncoderKind::EfficientNetB0,
            EncoderKind::EfficientNetLite0,
            EncoderKind::Plain,
        ];
        for encoder in encoders {
            for depth in 3..=5 {
                let config = UnetConfig {
                    encoder,
                    encoder_depth: depth,
                    classes: 4,
                    ..UnetConfig::default()
                };
                let (features, logits) = logits_shape(&config, [64, 64]);
                assert_eq!(logits, [2, 4, 64, 64], "{encoder:?} depth {depth}");
                assert_eq!(features.len(), depth + 1, "{encoder:?} depth {depth}");
                for (level, dims) in features.iter().enumerate() {
                    assert_eq!(
                        dims[2],
                        64 >> level,
                        "{encoder:?} depth {depth} level {level}"
                    );
                }
            }
        }
    }

    #[test]
    fn feature_channels_follow_smp() {
        let config = UnetConfig::default();
        let (features, _) = logits_shape(&config, [64, 64]);
        let channels: Vec<usize> = features.iter().map(|d| d[1]).collect();
        assert_eq!(channels, [1, 32, 24, 40, 112, 320]);
    }

    #[test]
    fn three_channels_and_odd_sizes_work() {
        for flavour in [Flavour::Tf, Flavour::Torchvision] {
            let config = UnetConfig {
                flavour,
                in_channels: 3,
                encoder_depth: 4,
                ..UnetConfig::default()
            };
            let (features, logits) = logits_shape(&config, [77, 101]);
            assert_eq!(logits, [2, 2, 77, 101]);
            assert_eq!(features[1][2..], [39, 51]);
        }
    }

    #[test]
    fn explicit_decoder_widths_are_used() {
        let config = UnetConfig {
            encoder: EncoderKind::Plain,
            encoder_depth: 3,
            decoder_channels: Some(vec![48, 24, 8]),
            ..UnetConfig::default()
        };
        let model = config.init(&Device::flex()).expect("valid config");
        let widths: Vec<usize> = model
            .decoder
            .iter()
            .map(|b| b.conv2.conv.weight.lazy_shape()[0])
            .collect();
        assert_eq!(widths, [48, 24, 8]);
        assert_eq!(model.head.weight.lazy_shape()[1], 8);
    }

    /// Burn trains only on an autodiff device: there BatchNorm updates its running statistics
    /// and stochastic depth is random; after `valid()` the same input gives the same output.
    #[test]
    fn training_mode_needs_an_autodiff_device_and_valid_turns_it_off() {
        let device = Device::flex().autodiff();
        let config = UnetConfig {
            encoder_depth: 3,
            drop_connect_rate: 0.5,
            ..UnetConfig::default()
        };
        let model = config.init(&device).expect("valid config");
        let Encoder::EfficientNet(encoder) = &model.encoder else {
            panic!("an EfficientNet encoder")
        };
        let running_mean = |m: &Unet| -> Vec<f32> {
            let Encoder::EfficientNet(e) = &m.encoder else {
                unreachable!()
            };
            e.stem
                .bn
                .running_mean
                .value_sync()
                .to_data()
                .iter::<f32>()
                .collect()
        };
        let before = running_mean(&model);
        assert!(before.iter().all(|&v| v == 0.0));
        assert!(encoder.blocks[2].drop_path.is_some());
        let input = Tensor::<4>::random([2, 1, 32, 32], Distribution::Normal(3.0, 1.0), &device);
        let _ = model.forward(input.clone());
        let after = running_mean(&model);
        assert!(
            after.iter().any(|&v| v != 0.0),
            "train mode updates running stats"
        );

        let eval = model.valid();
        let plain_input = input.inner();
        let a: Vec<f32> = eval.forward(plain_input.clone()).to_data().iter().collect();
        let b: Vec<f32> = eval.forward(plain_input).to_data().iter().collect();
        assert_eq!(a, b, "evaluation is deterministic");
        assert_eq!(
            running_mean(&eval),
            after,
            "evaluation leaves running stats alone"
        );
    }
}
