//! The layers the encoders and the decoder are built from: conv-BN-activation, squeeze-excitation,
//! stochastic depth and the MBConv (inverted residual) block.

use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor, activation};

pub use super::activation::Activation;
use super::batch_norm::batch_norm_act;
use super::gate::gate;

use super::config::Flavour;
use super::conv::conv2d_module;

/// The padding of a `kernel`-sized convolution in the given flavour. TF `SAME` is what Burn's
/// `PaddingConfig2d::Same` computes (per input size and stride, the odd pixel after), so one
/// layer handles every input size, odd ones included.
pub fn conv_padding(flavour: Flavour, kernel: usize) -> PaddingConfig2d {
    match flavour {
        Flavour::Tf => PaddingConfig2d::Same,
        Flavour::Torchvision => {
            let p = kernel / 2;
            PaddingConfig2d::Explicit(p, p, p, p)
        }
    }
}

/// The shape of one [`ConvBnAct`].
#[derive(Clone, Debug)]
pub struct ConvBnActConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    /// `in_channels` for a depthwise convolution, 1 for a dense one.
    pub groups: usize,
    pub padding: PaddingConfig2d,
    pub bn_epsilon: f64,
    pub bn_momentum: f64,
    pub activation: Activation,
}

impl ConvBnActConfig {
    /// A dense convolution with PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1).
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        let p = kernel / 2;
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            groups: 1,
            padding: PaddingConfig2d::Explicit(p, p, p, p),
            bn_epsilon: 1e-5,
            bn_momentum: 0.1,
            activation: Activation::Relu,
        }
    }

    pub fn init(&self, device: &Device) -> ConvBnAct {
        // No conv bias: the BatchNorm's beta right after it would absorb any.
        let conv = Conv2dConfig::new(
            [self.in_channels, self.out_channels],
            [self.kernel, self.kernel],
        )
        .with_stride([self.stride, self.stride])
        .with_groups(self.groups)
        .with_padding(self.padding.clone())
        .with_bias(false)
        .init(device);
        let bn = BatchNormConfig::new(self.out_channels)
            .with_epsilon(self.bn_epsilon)
            .with_momentum(self.bn_momentum)
            .init(device);
        ConvBnAct {
            conv,
            bn,
            activation: self.activation,
        }
    }
}

/// Convolution (no bias), BatchNorm, activation: the unit every network here is made of.
#[derive(Module, Debug)]
pub struct ConvBnAct {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    #[module(skip)]
    pub activation: Activation,
}

impl ConvBnAct {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = conv2d_module(&self.conv, x);
        batch_norm_act(&self.bn, y, self.activation)
    }
}

/// Squeeze-excitation: a per-channel gate computed from the globally pooled activation, so a
/// block can weigh its channels by what the whole image contains.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// 1x1 conv with bias, expanded → squeezed channels.
    pub reduce: Conv2d,
    /// 1x1 conv with bias, squeezed → expanded channels.
    pub expand: Conv2d,
}

impl SqueezeExcitation {
    pub fn new(channels: usize, squeezed: usize, device: &Device) -> Self {
        Self {
            reduce: Conv2dConfig::new([channels, squeezed], [1, 1]).init(device),
            expand: Conv2dConfig::new([squeezed, channels], [1, 1]).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let pooled = x.clone().mean_dim(3).mean_dim(2);
        let reduced = activation::silu(conv2d_module(&self.reduce, pooled));
        let gate_logits = conv2d_module(&self.expand, reduced);
        gate(x, gate_logits)
    }
}

/// Stochastic depth ("drop connect" in the TF code): in training, drops a residual branch for a
/// whole sample with probability `rate` and scales the kept ones by `1 / (1 - rate)`, so the
/// expectation is unchanged; in evaluation it is the identity.
#[derive(Module, Debug)]
pub struct StochasticDepth {
    pub rate: f64,
    /// Cleared by `valid()` and `freeze()`, like Burn's own `Dropout`.
    pub training: Param<Flag>,
}

impl StochasticDepth {
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            training: Param::from_bool(true),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Burn 0.22 has no global train/eval switch: training is an autodiff device together with
        // the layer's flag, the same test `BatchNorm` and `Dropout` make.
        if self.rate == 0.0 || !self.training.is_enabled() || !x.device().is_autodiff() {
            return x;
        }
        let keep = 1.0 - self.rate;
        let [batch, ..] = x.dims();
        let mask =
            Tensor::<4>::random([batch, 1, 1, 1], Distribution::Bernoulli(keep), &x.device());
        x * mask.div_scalar(keep)
    }
}

/// The shape of one [`MbConv`] block.
#[derive(Clone, Debug)]
pub struct MbConvConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Whether the block has squeeze-excitation (B0 yes, Lite0 no).
    pub squeeze_excitation: bool,
    pub activation: Activation,
    pub flavour: Flavour,
    /// This block's stochastic depth rate (already scaled by its position).
    pub drop_rate: f64,
}

impl MbConvConfig {
    pub fn init(&self, device: &Device) -> MbConv {
        let flavour = self.flavour;
        let expanded = self.in_channels * self.expand_ratio;
        let unit =
            |cin: usize, cout: usize, kernel: usize, activation: Activation| ConvBnActConfig {
                in_channels: cin,
                out_channels: cout,
                kernel,
                stride: 1,
                groups: 1,
                padding: conv_padding(flavour, kernel),
                bn_epsilon: flavour.bn_epsilon(),
                bn_momentum: flavour.bn_momentum(),
                activation,
            };
        let expand = (self.expand_ratio != 1)
            .then(|| unit(self.in_channels, expanded, 1, self.activation).init(device));
        let depthwise = ConvBnActConfig {
            stride: self.stride,
            groups: expanded,
            ..unit(expanded, expanded, self.kernel, self.activation)
        }
        .init(device);
        // Squeezed width from the block's input, not its expanded width (both torchvision and
        // the TF code do so).
        let se = self
            .squeeze_excitation
            .then(|| SqueezeExcitation::new(expanded, (self.in_channels / 4).max(1), device));
        let project = unit(expanded, self.out_channels, 1, Activation::Identity).init(device);
        let residual = self.stride == 1 && self.in_channels == self.out_channels;
        let drop_path =
            (residual && self.drop_rate > 0.0).then(|| StochasticDepth::new(self.drop_rate));
        MbConv {
            expand,
            depthwise,
            se,
            project,
            drop_path,
            residual,
        }
    }
}

/// Inverted residual block: 1x1 expand, kxk depthwise, [squeeze-excitation], 1x1 linear
/// projection, and an identity shortcut when the shape is unchanged.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvBnAct>,
    pub depthwise: ConvBnAct,
    pub se: Option<SqueezeExcitation>,
    pub project: ConvBnAct,
    pub drop_path: Option<StochasticDepth>,
    pub residual: bool,
}

impl MbConv {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = match &self.expand {
            Some(expand) => expand.forward(x.clone()),
            None => x.clone(),
        };
        h = self.depthwise.forward(h);
        if let Some(se) = &self.se {
            h = se.forward(h);
        }
        h = self.project.forward(h);
        if !self.residual {
            return h;
        }
        if let Some(drop_path) = &self.drop_path {
            h = drop_path.forward(h);
        }
        h + x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_depth_drops_whole_samples_in_training_only() {
        let layer = StochasticDepth::new(0.5);
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::ones([256, 2, 1, 1], &device);
        let y: Vec<f32> = layer.forward(x).to_data().iter().collect();
        // Kept samples are scaled by 1 / (1 - 0.5); a sample's channels share one draw.
        assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
        assert!(y.chunks(2).all(|c| c[0] == c[1]));
        let dropped = y.iter().filter(|&&v| v == 0.0).count();
        assert!((64..=448).contains(&dropped), "{dropped} of 512 dropped");

        let eval = layer.valid();
        let x = Tensor::<4>::ones([8, 2, 1, 1], &Device::flex());
        let y: Vec<f32> = eval.forward(x).to_data().iter().collect();
        assert!(y.iter().all(|&v| v == 1.0));
    }
}
