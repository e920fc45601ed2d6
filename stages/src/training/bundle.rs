//! The trained model as a folder every later stage reads: weights (safetensors), the training
//! config (which rebuilds the network), the split's preprocessing and per-class thresholds.

use std::path::Path;

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array4, ArrayView4, Axis, s};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::data::intensity::Preprocessing;
use crate::model::Unet;
use crate::{Error, Result};

pub const WEIGHTS: &str = "weights.safetensors";
pub const CONFIG: &str = "config.json";
pub const PREPROCESSING: &str = "preprocessing.json";
pub const THRESHOLDS: &str = "thresholds.json";

/// Probability above which a pixel is called lesion, per class; `evaluate` may tune them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub ggo: f64,
    pub consolidation: f64,
}

/// A trained model ready to predict.
pub struct Bundle {
    pub model: Unet,
    pub config: TrainConfig,
    pub preprocessing: Preprocessing,
    pub thresholds: Thresholds,
    pub device: Device,
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid_data(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_data(path, e.to_string()))
}

/// Writes a bundle folder at `dir` (created if missing).
pub fn write(
    dir: &Path,
    model: &Unet,
    config: &TrainConfig,
    preprocessing: &Preprocessing,
    thresholds: Thresholds,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights = dir.join(WEIGHTS);
    // Without Burn's metadata: it is a HashMap, written in a different order by every process,
    // and identical weights must give identical bytes (the cache keys what follows on them).
    let mut store = SafetensorsStore::from_file(&weights)
        .overwrite(true)
        .clear_metadata();
    model
        .save_into(&mut store)
        .map_err(|e| Error::invalid_data(&weights, format!("cannot save weights: {e}")))?;
    write_json(&dir.join(CONFIG), config)?;
    write_json(&dir.join(PREPROCESSING), preprocessing)?;
    write_json(&dir.join(THRESHOLDS), &thresholds)
}

/// The JSON parts of a bundle folder (training config, preprocessing, thresholds), checked, without
/// the weights: what a server needs before its model thread has loaded the network.
pub fn read_parts(dir: &Path) -> Result<(TrainConfig, Preprocessing, Thresholds)> {
    if !dir.is_dir() {
        return Err(Error::invalid_data(
            dir,
            "is not a bundle folder (weights.safetensors, config.json, preprocessing.json, thresholds.json)",
        ));
    }
    let config: TrainConfig = read_json(&dir.join(CONFIG))?;
    config.validate()?;
    let preprocessing: Preprocessing = read_json(&dir.join(PREPROCESSING))?;
    let thresholds: Thresholds = read_json(&dir.join(THRESHOLDS))?;
    Ok((config, preprocessing, thresholds))
}

/// Reads a bundle folder and rebuilds its network on `device`, in evaluation mode.
pub fn load(dir: &Path, device: &Device) -> Result<Bundle> {
    let (config, preprocessing, thresholds) = read_parts(dir)?;
    let weights = dir.join(WEIGHTS);
    let mut model = config.model.init(device)?;
    let mut store = SafetensorsStore::from_file(&weights);
    let result = model.load_from(&mut store).map_err(|e| Error::Weights {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    if let Some(error) = result.errors.first() {
        return Err(Error::Weights {
            path: weights,
            message: error.to_string(),
        });
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(Error::Weights {
            path: weights,
            message: format!("{} parameters missing, e.g. {name}", result.missing.len()),
        });
    }
    Ok(Bundle {
        model: burn::module::Module::valid(&model),
        config,
        preprocessing,
        thresholds,
        device: device.clone(),
    })
}

/// `(n,C,H,W)` windowed slices → the model's input tensor, normalised as the split fixed.
pub fn input_tensor(
    images: ArrayView4<f32>,
    preprocessing: &Preprocessing,
    device: &Device,
) -> Tensor<4> {
    let mut x = images.to_owned();
    for slice in x.axis_iter_mut(Axis(0)) {
        preprocessing.normalize(slice);
    }
    let (n, c, h, w) = x.dim();
    Tensor::from_data(
        TensorData::new(x.into_raw_vec_and_offset().0, [n, c, h, w]),
        device,
    )
}

/// Sigmoid probabilities of logits as an array of the same shape.
pub fn probabilities(logits: Tensor<4>) -> Result<Array4<f32>> {
    let [n, k, h, w] = logits.dims();
    let values = sigmoid(logits)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::invalid_data("<model output>", format!("{e:?}")))?;
    Array4::from_shape_vec((n, k, h, w), values)
        .map_err(|e| Error::invalid_data("<model output>", e.to_string()))
}

impl Bundle {
    /// Probabilities `(N,2,H,W)` for windowed images `(N,C,H,W)` in [0,1], `batch` slices at a
    /// time.
    pub fn predict(&self, images: ArrayView4<f32>, batch: usize) -> Result<Array4<f32>> {
        let (n, c, h, w) = images.dim();
        if c != self.preprocessing.channels() {
            return Err(Error::invalid_data(
                "<images>",
                format!(
                    "the model takes {} channels (windows), the images have {c}",
                    self.preprocessing.channels()
                ),
            ));
        }
        let mut out = Array4::zeros((n, self.config.model.classes, h, w));
        for start in (0..n).step_by(batch.max(1)) {
            let end = (start + batch.max(1)).min(n);
            let x = input_tensor(
                images.slice(s![start..end, .., .., ..]),
                &self.preprocessing,
                &self.device,
            );
            let p = probabilities(self.model.forward(x))?;
            out.slice_mut(s![start..end, .., .., ..]).assign(&p);
        }
        Ok(out)
    }
}
