//! Loading PyTorch state dicts saved as safetensors (torchvision, lukemelas/SMP, Lite0) into the
//! Burn networks, through burn-store with one key remapping per PyTorch module.

use std::path::Path;

use burn::module::Module;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    ApplyError, KeyRemapper, ModuleAdapter, ModuleContext, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};

use super::efficientnet::{EfficientNet, EfficientNetEncoder, STAGE_LAST_BLOCKS};
use super::unet::{Encoder, Unet};
use crate::{Error, Result};

/// Which PyTorch code wrote a state dict, which decides its key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDictLayout {
    /// torchvision's `efficientnet_b0`: `features.{stage}.{block}.block.{layer}.…`,
    /// `features.8` (head) and `classifier.1`.
    Torchvision,
    /// lukemelas' EfficientNet-PyTorch: `_conv_stem`, `_bn0`, `_blocks.{i}._expand_conv`, …,
    /// `_conv_head`, `_bn1`, `_fc`. SMP's `efficientnet-b0` encoder (under `encoder.`) and the
    /// EfficientNet-Lite0 ImageNet checkpoint use it.
    Lukemelas,
}

/// PyTorch module prefix → Burn module prefix; a parameter keeps its own name (`weight`,
/// `running_mean`, …), and `PyTorchToBurnAdapter` pairs BatchNorm's `weight`/`bias` with
/// `gamma`/`beta` and transposes `Linear` weights.
type Renames = Vec<(String, String)>;

fn push_conv_bn(renames: &mut Renames, torch: &str, conv: &str, bn: &str, burn: &str) {
    renames.push((format!("{torch}{conv}"), format!("{burn}.conv")));
    renames.push((format!("{torch}{bn}"), format!("{burn}.bn")));
}

/// The renames of an EfficientNet trunk, read off the built module so that the blocks with an
/// expansion or squeeze-excitation are exactly the ones the mapping expects.
fn encoder_renames(
    encoder: &EfficientNetEncoder,
    layout: StateDictLayout,
    torch: &str,
    burn: &str,
) -> Renames {
    let mut renames = Renames::new();
    match layout {
        StateDictLayout::Torchvision => {
            push_conv_bn(
                &mut renames,
                torch,
                "features.0.0",
                "features.0.1",
                &format!("{burn}stem"),
            );
            for (i, block) in encoder.blocks.iter().enumerate() {
                // torchvision nests blocks per stage and numbers a block's layers in a
                // `Sequential`, so every index after a missing expansion shifts down by one.
                let stage = STAGE_LAST_BLOCKS
                    .iter()
                    .position(|&last| i <= last)
                    .unwrap_or(0);
                let first = if stage == 0 {
                    0
                } else {
                    STAGE_LAST_BLOCKS[stage - 1] + 1
                };
                let prefix = format!("{torch}features.{}.{}.block", stage + 1, i - first);
                let ours = format!("{burn}blocks.{i}");
                let mut layer = 0;
                if block.expand.is_some() {
                    push_conv_bn(
                        &mut renames,
                        &prefix,
                        ".0.0",
                        ".0.1",
                        &format!("{ours}.expand"),
                    );
                    layer += 1;
                }
                push_conv_bn(
                    &mut renames,
                    &prefix,
                    &format!(".{layer}.0"),
                    &format!(".{layer}.1"),
                    &format!("{ours}.depthwise"),
                );
                layer += 1;
                if block.se.is_some() {
                    renames.push((format!("{prefix}.{layer}.fc1"), format!("{ours}.se.reduce")));
                    renames.push((format!("{prefix}.{layer}.fc2"), format!("{ours}.se.expand")));
                    layer += 1;
                }
                push_conv_bn(
                    &mut renames,
                    &prefix,
                    &format!(".{layer}.0"),
                    &format!(".{layer}.1"),
                    &format!("{ours}.project"),
                );
            }
        }
        StateDictLayout::Lukemelas => {
            push_conv_bn(
                &mut renames,
                torch,
                "_conv_stem",
                "_bn0",
                &format!("{burn}stem"),
            );
            for i in 0..encoder.blocks.len() {
                let prefix = format!("{torch}_blocks.{i}.");
                let ours = format!("{burn}blocks.{i}");
                push_conv_bn(
                    &mut renames,
                    &prefix,
                    "_expand_conv",
                    "_bn0",
                    &format!("{ours}.expand"),
                );
                push_conv_bn(
                    &mut renames,
                    &prefix,
                    "_depthwise_conv",
                    "_bn1",
                    &format!("{ours}.depthwise"),
                );
                renames.push((format!("{prefix}_se_reduce"), format!("{ours}.se.reduce")));
                renames.push((format!("{prefix}_se_expand"), format!("{ours}.se.expand")));
                push_conv_bn(
                    &mut renames,
                    &prefix,
                    "_project_conv",
                    "_bn2",
                    &format!("{ours}.project"),
                );
            }
        }
    }
    renames
}

fn classifier_renames(layout: StateDictLayout) -> Renames {
    let mut renames = Renames::new();
    match layout {
        StateDictLayout::Torchvision => {
            push_conv_bn(&mut renames, "", "features.8.0", "features.8.1", "head");
            renames.push(("classifier.1".into(), "classifier".into()));
        }
        StateDictLayout::Lukemelas => {
            push_conv_bn(&mut renames, "", "_conv_head", "_bn1", "head");
            renames.push(("_fc".into(), "classifier".into()));
        }
    }
    renames
}

/// Lets a one-channel network start from RGB weights: the stem kernel is summed over its three
/// input channels. Convolution is linear in its input, so this equals feeding the grey image
/// replicated on all three channels, which is what the pretrained stem would then see.
#[derive(Clone)]
struct GreyStem {
    /// Whether the network's stem takes one channel; a three-channel one loads as is.
    enabled: bool,
}

impl ModuleAdapter for GreyStem {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        let dims = tensor.shape.to_vec();
        if !self.enabled
            || !tensor.name.ends_with("stem.conv.weight")
            || dims.len() != 4
            || dims[1] != 3
        {
            return tensor;
        }
        let (out_channels, kh, kw) = (dims[0], dims[2], dims[3]);
        let name = tensor.name.clone();
        bridge::map_data(
            tensor,
            name,
            DType::F32,
            Shape::new([out_channels, 1, kh, kw]),
            move |data| {
                let values: Vec<f32> = data.iter::<f32>().collect();
                let plane = kh * kw;
                let summed: Vec<f32> = (0..out_channels * plane)
                    .map(|i| {
                        let (o, p) = (i / plane, i % plane);
                        (0..3).map(|c| values[(o * 3 + c) * plane + p]).sum()
                    })
                    .collect();
                TensorData::new(summed, [out_channels, 1, kh, kw])
            },
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Loads `path` into `module` under `renames` (`grey_stem` when the network takes one channel).
/// Every parameter under one of `required` (Burn prefixes) must be found with its exact shape;
/// tensors of the file that nothing asks for (`num_batches_tracked`, a classifier head, blocks a
/// shallow encoder lacks) are ignored.
fn load<M: Module>(
    mut module: M,
    path: &Path,
    renames: &Renames,
    grey_stem: bool,
    required: &[&str],
) -> Result<M> {
    std::fs::metadata(path).map_err(|source| Error::io(path, source))?;
    let weights_error = |message: String| Error::Weights {
        path: path.to_path_buf(),
        message,
    };
    // Anchored and escaped: each rename applies to one module's parameters and nothing else.
    let patterns = renames.iter().map(|(torch, burn)| {
        (
            format!("^{}\\.", torch.replace('.', "\\.")),
            format!("{burn}."),
        )
    });
    let remapper = KeyRemapper::from_pattern_iter(patterns)
        .map_err(|e| weights_error(format!("bad key pattern: {e}")))?;
    let adapter = PyTorchToBurnAdapter.chain(GreyStem { enabled: grey_stem });
    let mut store = SafetensorsStore::from_file(path)
        .remap(remapper)
        .with_from_adapter(adapter)
        // The enum of encoder kinds is a Burn detail that PyTorch names never contain.
        .skip_enum_variants(true)
        // Checked below, to name the tensors in our own error.
        .validate(false)
        .allow_partial(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| weights_error(e.to_string()))?;
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path: tensor,
                expected,
                found,
            } => Error::WeightShape {
                path: path.to_path_buf(),
                tensor: tensor.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => weights_error(other.to_string()),
        });
    }
    let missing: Vec<&str> = result
        .missing
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| required.iter().any(|prefix| name.starts_with(prefix)))
        .collect();
    if !missing.is_empty() {
        let shown = missing
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(weights_error(format!(
            "{} parameters not found in the file (is it the right layout?): {shown}{}",
            missing.len(),
            if missing.len() > 5 { ", …" } else { "" }
        )));
    }
    Ok(module)
}

impl EfficientNet {
    /// Loads a whole classifier checkpoint (trunk, head and classifier). A one-channel network
    /// takes a three-channel stem summed over its input channels.
    pub fn load_pytorch(self, path: impl AsRef<Path>, layout: StateDictLayout) -> Result<Self> {
        let mut renames = encoder_renames(&self.encoder, layout, "", "encoder.");
        renames.extend(classifier_renames(layout));
        let grey = self.encoder.in_channels() == 1;
        load(self, path.as_ref(), &renames, grey, &[""])
    }
}

impl Unet {
    /// Loads a whole SMP `Unet(efficientnet-b0)` state dict: encoder, decoder and head.
    pub fn load_smp(self, path: impl AsRef<Path>) -> Result<Self> {
        let (mut renames, grey) = match &self.encoder {
            Encoder::EfficientNet(encoder) => (
                encoder_renames(encoder, StateDictLayout::Lukemelas, "encoder.", "encoder."),
                encoder.in_channels() == 1,
            ),
            Encoder::Plain(_) => (Renames::new(), false),
        };
        for i in 0..self.decoder.len() {
            for conv in ["conv1", "conv2"] {
                push_conv_bn(
                    &mut renames,
                    &format!("decoder.blocks.{i}.{conv}"),
                    ".0",
                    ".1",
                    &format!("decoder.{i}.{conv}"),
                );
            }
        }
        renames.push(("segmentation_head.0".into(), "head".into()));
        load(self, path.as_ref(), &renames, grey, &[""])
    }

    /// Loads only the encoder from a pretrained classifier checkpoint (torchvision's
    /// `efficientnet_b0`, the Lite0 ImageNet weights), leaving the decoder and head as they are.
    /// A one-channel network takes the RGB stem summed over its input channels.
    pub fn load_encoder(self, path: impl AsRef<Path>, layout: StateDictLayout) -> Result<Self> {
        let path = path.as_ref();
        let (renames, grey) = match &self.encoder {
            Encoder::EfficientNet(encoder) => (
                encoder_renames(encoder, layout, "", "encoder."),
                encoder.in_channels() == 1,
            ),
            Encoder::Plain(_) => {
                return Err(Error::Weights {
                    path: path.to_path_buf(),
                    message: "the plain encoder has no pretrained weights to load".into(),
                });
            }
        };
        load(self, path, &renames, grey, &["encoder."])
    }
}
