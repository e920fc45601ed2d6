//! The segmentation model: a U-Net whose encoder is EfficientNet-B0, EfficientNet-Lite0 or the
//! original double-conv stack, in Burn, with loaders for the PyTorch checkpoints it matches.
//!
//! Burn 0.22 picks the backend at run time through [`burn::tensor::Device`] (`Device::flex()` on
//! CPU); the same model runs anywhere. Training versus evaluation follows Burn's rule: BatchNorm
//! uses (and updates) batch statistics, and stochastic depth drops branches, only when the
//! tensors live on an autodiff device (`device.autodiff()`) *and* the module has not been put
//! in validation mode with `Module::valid()`; otherwise BatchNorm uses its running statistics.
//! Burn keeps running-statistics updates per thread and merges them on `value_sync()` or
//! `valid()`, so read them through those. One difference from PyTorch: Burn updates
//! `running_var` with the biased batch variance, where PyTorch uses the unbiased one (a factor
//! n/(n-1), negligible for the batch·H·W of a slice).

mod activation;
mod batch_norm;
mod blocks;
mod config;
mod conv;
mod dense;
mod depthwise;
mod efficientnet;
mod flex;
mod gate;
mod simd;
mod unet;
mod upsample;
mod weights;

pub use batch_norm::batch_norm_act;
pub use blocks::{
    Activation, ConvBnAct, ConvBnActConfig, MbConv, MbConvConfig, SqueezeExcitation,
    StochasticDepth,
};
pub use config::{DEFAULT_DECODER_CHANNELS, DEFAULT_PLAIN_WIDTH, EncoderKind, Flavour, UnetConfig};
pub use conv::{conv2d, conv2d_module};
pub use efficientnet::{
    EfficientNet, EfficientNetConfig, EfficientNetEncoder, EfficientNetTrace, EfficientNetVariant,
    HEAD_CHANNELS, NUM_BLOCKS, STAGE_LAST_BLOCKS, STEM_CHANNELS, feature_channels,
};
pub use gate::gate;
pub use unet::{DecoderBlock, DoubleConv, Encoder, PlainEncoder, Unet, UnetTrace};
pub use upsample::upsample_cat;
pub use weights::StateDictLayout;
