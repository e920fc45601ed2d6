//! The training loop: AdamW on (focal) BCE + Dice with warm-up and cosine decay, validation after
//! every epoch, early stopping on the validation score, a checkpoint per epoch to resume from,
//! and at the end a bundle of the best weights with the metrics and the curve.

use std::path::Path;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::{ModuleStore, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{Array4, s};

use super::bundle::{self, Thresholds, input_tensor, probabilities};
use super::checkpoint::{Checkpoints, TrainState, load_module};
use super::config::{EncoderWeights, TrainConfig};
use super::data::{TARGET_LABELS, TrainingItems, Validation, epoch_order, mix, targets};
use super::device::{self, TrainDevice};
use super::early_stopping::Verdict;
use super::history::{ClassF1, EpochRecord, save_curve, write_jsonl};
use super::loss::segmentation_loss;
use super::schedule::LrSchedule;
use crate::data::intensity::Preprocessing;
use crate::metrics::{CLASSES, evaluate, masks_from_labels};
use crate::model::{StateDictLayout, Unet};
use crate::{Error, Progress, Result};

/// The files training reads.
#[derive(Debug, Clone, Copy)]
pub struct TrainInputs<'a> {
    /// An augment-cache `shards` folder.
    pub shards: &'a Path,
    /// The validation images and labels; without them (a final training on all the data) every
    /// epoch counts as the best, so the bundle holds the last one, and early stopping does not
    /// apply.
    pub validation: Option<(&'a Path, &'a Path)>,
    /// The split's `preprocessing.json`.
    pub preprocessing: &'a Path,
    /// An ImageNet checkpoint for the EfficientNet encoder (torchvision or lukemelas layout, told
    /// apart by its key names), or `None` to start from random weights.
    pub encoder_weights: Option<&'a Path>,
}

/// Where training writes its results.
#[derive(Debug, Clone, Copy)]
pub struct TrainOutputs<'a> {
    /// The bundle folder (see [`bundle`]).
    pub bundle: &'a Path,
    pub metrics: &'a Path,
    pub curve: &'a Path,
    /// `recipe.json`: these params with `epochs` set to the best epoch and early stopping off,
    /// the params a final training on train + validation takes.
    pub recipe: Option<&'a Path>,
}

/// How a training run went.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub device: String,
    /// Epochs found done in the work folder at the start (0 for a fresh run).
    pub resumed_after: usize,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_score: f64,
    pub stopped_early: bool,
    /// All epochs ran (or early stopping ended the run) and the outputs are written; `false`
    /// after a run cut short with `until`.
    pub complete: bool,
}

/// Which layout an encoder checkpoint has, from one key each layout is sure to have.
fn encoder_layout(path: &Path) -> Result<StateDictLayout> {
    let mut store = SafetensorsStore::from_file(path);
    let has = |store: &mut SafetensorsStore, key: &str| {
        store
            .get_tensor(key)
            .map(|t| t.is_some())
            .map_err(|e| Error::Weights {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    };
    if has(&mut store, "_conv_stem.weight")? {
        Ok(StateDictLayout::Lukemelas)
    } else if has(&mut store, "features.0.0.weight")? {
        Ok(StateDictLayout::Torchvision)
    } else {
        Err(Error::Weights {
            path: path.to_path_buf(),
            message: "neither a torchvision (`features.0.0.weight`) nor a lukemelas \
                      (`_conv_stem.weight`) EfficientNet checkpoint"
                .into(),
        })
    }
}

fn read_preprocessing(path: &Path) -> Result<Preprocessing> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::invalid_data(path, e.to_string()))
}

/// Checks that data, preprocessing and network agree on the channels.
fn check_channels(
    config: &TrainConfig,
    items: &TrainingItems,
    val: Option<&Validation>,
    preprocessing: &Preprocessing,
    inputs: &TrainInputs<'_>,
) -> Result<()> {
    let channels = preprocessing.channels();
    if items.channels != channels {
        return Err(Error::invalid_data(
            inputs.shards,
            format!(
                "the shards have {} channels, the preprocessing {channels}",
                items.channels
            ),
        ));
    }
    if let (Some(val), Some((val_images, _))) = (val, inputs.validation)
        && val.images.dim().1 != channels
    {
        return Err(Error::invalid_data(
            val_images,
            format!(
                "{} channels, the preprocessing has {channels}",
                val.images.dim().1
            ),
        ));
    }
    if config.model.in_channels != channels {
        return Err(Error::invalid_param(
            "model",
            format!(
                "in_channels is {}, but the split makes {channels}-channel inputs (one per window); set model.in_channels = {channels}",
                config.model.in_channels
            ),
        ));
    }
    Ok(())
}

/// Validation loss (mean per slice) and metrics, with the model in evaluation mode.
fn validate(
    model: &Unet,
    val: &Validation,
    preprocessing: &Preprocessing,
    config: &TrainConfig,
    device: &Device,
) -> Result<(f64, crate::metrics::Metrics)> {
    let (n, _, h, w) = val.images.dim();
    let mut predicted = Array4::<bool>::from_elem((n, TARGET_LABELS.len(), h, w), false);
    let mut loss_sum = 0.0;
    for start in (0..n).step_by(config.batch_size) {
        let end = (start + config.batch_size).min(n);
        let x = input_tensor(
            val.images.slice(s![start..end, .., .., ..]),
            preprocessing,
            device,
        );
        let y = targets(val.labels.slice(s![start..end, .., ..]));
        let y = Tensor::from_data(
            TensorData::new(y.into_raw_vec_and_offset().0, [end - start, 2, h, w]),
            device,
        );
        let logits = model.forward(x);
        let loss = segmentation_loss(logits.clone(), y, &config.loss).into_scalar::<f32>();
        loss_sum += f64::from(loss) * (end - start) as f64;
        let p = probabilities(logits)?;
        predicted
            .slice_mut(s![start..end, .., .., ..])
            .assign(&p.mapv(|v| f64::from(v) > config.threshold));
    }
    let truth = masks_from_labels(val.labels.view(), &TARGET_LABELS);
    Ok((
        loss_sum / n as f64,
        evaluate(predicted.view(), truth.view(), &CLASSES),
    ))
}

static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains a U-Net as `config` says on the shards, validating on the split's validation part.
/// Resumes from the checkpoint in `work_dir` when one is there (same inputs, config and seed).
pub fn train(
    inputs: &TrainInputs<'_>,
    config: &TrainConfig,
    seed: u64,
    work_dir: &Path,
    outputs: &TrainOutputs<'_>,
    progress: &dyn Progress,
) -> Result<TrainReport> {
    train_until(inputs, config, seed, work_dir, outputs, progress, None)
}

/// [`train`], stopping once `until` epochs are done (when given): the checkpoint stays in
/// `work_dir` for a later call to go on from, and the outputs are only written when the run is
/// complete. The epochs done are the same as in one uninterrupted run (a tuning trial that ASHA
/// promotes continues where it stopped).
pub fn train_until(
    inputs: &TrainInputs<'_>,
    config: &TrainConfig,
    seed: u64,
    work_dir: &Path,
    outputs: &TrainOutputs<'_>,
    progress: &dyn Progress,
    until: Option<usize>,
) -> Result<TrainReport> {
    config.validate()?;
    // Burn's random generator is one per device and process: two trainings at once would draw
    // from it in turns and neither would be reproducible. One at a time per process.
    let _one_at_a_time = TRAINING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let items = TrainingItems::open(inputs.shards)?;
    let val = inputs
        .validation
        .map(|(images, labels)| Validation::read(images, labels))
        .transpose()?;
    let preprocessing = read_preprocessing(inputs.preprocessing)?;
    check_channels(config, &items, val.as_ref(), &preprocessing, inputs)?;
    let TrainDevice {
        device,
        name: device_name,
        ..
    } = device::select(config.device)?;
    match device::auto_hint(config.device) {
        Some(hint) => tracing::info!("training on {device_name}; {hint}"),
        None => tracing::info!("training on {device_name}"),
    }
    let autodiff = device.clone().autodiff();

    // Initial weights depend on the seed only; the backend's generator is reseeded per epoch
    // below (stochastic depth), so its state need not be saved.
    device.seed(seed);
    autodiff.seed(seed);
    let mut model = config.model.init(&autodiff)?;
    match (config.encoder_weights, inputs.encoder_weights) {
        (EncoderWeights::Imagenet, Some(path)) => {
            model = model.load_encoder(path, encoder_layout(path)?)?;
        }
        (EncoderWeights::Imagenet, None) => {
            return Err(Error::invalid_param(
                "encoder_weights",
                "\"imagenet\" needs the stage's `weights` input, for example \
                 `inputs.weights = \"@imagenet.weights\"` with a `pretrained` stage named imagenet",
            ));
        }
        (EncoderWeights::None, Some(path)) => {
            return Err(Error::invalid_param(
                "encoder_weights",
                format!(
                    "is \"none\", but a `weights` input ({}) is wired; set encoder_weights = \"imagenet\" to use it",
                    path.display()
                ),
            ));
        }
        (EncoderWeights::None, None) => {}
    }
    let mut optimizer: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .with_grad_clipping(
            (config.grad_clip > 0.0)
                .then_some(GradientClippingConfig::Norm(config.grad_clip as f32)),
        )
        .init();

    let per_epoch = config
        .max_train_slices_per_epoch
        .map_or(items.len(), |m| m.min(items.len()));
    let steps_per_epoch = per_epoch.div_ceil(config.batch_size);
    let schedule = LrSchedule {
        peak: config.lr,
        floor: config.min_lr,
        warmup_steps: (config.warmup_epochs * steps_per_epoch as f64).round() as usize,
        total_steps: config.epochs * steps_per_epoch,
    };

    let checkpoints = Checkpoints::new(work_dir);
    let mut state = match checkpoints.resume(&mut model, &mut optimizer)? {
        Some(state) => {
            tracing::info!(
                "resuming after epoch {} from {}",
                state.epochs_done,
                work_dir.display()
            );
            state
        }
        None => TrainState::new(config.early_stopping_patience),
    };
    let resumed_after = state.epochs_done;
    progress.start((config.epochs * steps_per_epoch) as u64, "steps");
    progress.advance(state.steps_done as u64);

    let (c, h, w) = (items.channels, items.height, items.width);
    let stop_at = until.map_or(config.epochs, |u| u.min(config.epochs));
    while !state.stopped && state.epochs_done < stop_at {
        let epoch = state.epochs_done;
        let started = Instant::now();
        autodiff.seed(mix(seed, epoch as u64 + 1));
        let order = epoch_order(items.len(), seed, epoch, config.max_train_slices_per_epoch);
        let (mut loss_sum, mut lr) = (0.0, config.lr);
        for batch in order.chunks(config.batch_size) {
            let (images, labels) = items.batch(batch)?;
            let n = batch.len();
            let x = input_tensor(images.view(), &preprocessing, &autodiff);
            let y = targets(labels.view());
            let y = Tensor::from_data(
                TensorData::new(y.into_raw_vec_and_offset().0, [n, 2, h, w]),
                &autodiff,
            );
            debug_assert_eq!(x.dims(), [n, c, h, w]);
            let loss = segmentation_loss(model.forward(x), y, &config.loss);
            let value = f64::from(loss.clone().into_scalar::<f32>());
            if !value.is_finite() {
                return Err(Error::invalid_param(
                    "lr",
                    format!(
                        "the training loss became {value} in epoch {} (step {}); lower lr or set grad_clip",
                        epoch + 1,
                        state.steps_done + 1
                    ),
                ));
            }
            loss_sum += value * n as f64;
            lr = schedule.at(state.steps_done);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
            state.steps_done += 1;
            progress.advance(1);
        }
        // `valid()` merges BatchNorm's per-thread running statistics and leaves `model` as it is.
        let snapshot = model.valid();
        let mut record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / order.len() as f64,
            val_loss: None,
            val_f1: None,
            val_score: None,
            lr,
            seconds: 0.0,
        };
        let verdict = match &val {
            Some(val) => {
                let (val_loss, metrics) =
                    validate(&snapshot, val, &preprocessing, config, &device)?;
                record.val_loss = Some(val_loss);
                record.val_f1 = Some(ClassF1 {
                    ggo: metrics.classes[0].f1,
                    consolidation: metrics.classes[1].f1,
                });
                record.val_score = Some(metrics.score);
                state.stopping.observe(record.epoch, metrics.score)
            }
            None => {
                state.stopping.best_epoch = record.epoch;
                Verdict::Improved
            }
        };
        record.seconds = started.elapsed().as_secs_f64();
        match (record.val_loss, record.val_f1, record.val_score) {
            (Some(val_loss), Some(f1), Some(score)) => tracing::info!(
                "epoch {}/{}: train loss {:.4}, val loss {val_loss:.4}, val F1 GGO {:.3} consolidation {:.3}, score {score:.3}{} ({:.1} s)",
                record.epoch,
                config.epochs,
                record.train_loss,
                f1.ggo,
                f1.consolidation,
                if verdict == Verdict::Improved {
                    " (best)"
                } else {
                    ""
                },
                record.seconds
            ),
            _ => tracing::info!(
                "epoch {}/{}: train loss {:.4} ({:.1} s)",
                record.epoch,
                config.epochs,
                record.train_loss,
                record.seconds
            ),
        }
        state.history.push(record);
        state.epochs_done += 1;
        state.stopped = verdict == Verdict::Stop;
        checkpoints.save(&state, &snapshot, &optimizer, verdict == Verdict::Improved)?;
        if state.stopped {
            tracing::info!(
                "early stop: no better validation score for {} epochs",
                config.early_stopping_patience
            );
        }
    }

    let complete = state.stopped || state.epochs_done >= config.epochs;
    let report = |state: TrainState| TrainReport {
        device: device_name.clone(),
        resumed_after,
        best_epoch: state.stopping.best_epoch,
        best_score: state.stopping.best_score.unwrap_or(0.0),
        stopped_early: state.stopped,
        history: state.history,
        complete,
    };
    if !complete {
        return Ok(report(state));
    }
    let mut best = config.model.init(&device)?;
    load_module(&mut best, &checkpoints.best()?)?;
    let thresholds = Thresholds {
        ggo: config.threshold,
        consolidation: config.threshold,
    };
    bundle::write(outputs.bundle, &best, config, &preprocessing, thresholds)?;
    write_jsonl(outputs.metrics, &state.history)?;
    save_curve(outputs.curve, &state.history)?;
    if let Some(path) = outputs.recipe {
        let recipe = TrainConfig {
            epochs: state.stopping.best_epoch.max(1),
            early_stopping_patience: 0,
            ..config.clone()
        };
        let text = serde_json::to_string_pretty(&recipe)
            .map_err(|e| Error::invalid_data(path, e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    Ok(report(state))
}
