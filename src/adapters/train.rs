//! The `train` kind, which tuning trials run too.

use covseg_stages::training;

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, TrialProgress,
    Tunable, typed_params,
};

pub(crate) struct Train;

const TRAIN_BUNDLE: OutputSpec = OutputSpec {
    name: "bundle",
    file: "bundle",
    about: "folder: weights.safetensors, config.json, preprocessing.json, thresholds.json",
};
const TRAIN_METRICS: OutputSpec = OutputSpec {
    name: "metrics",
    file: "metrics.jsonl",
    about: "one JSON line per epoch: losses, validation F1 per class and score, lr, seconds",
};
const TRAIN_CURVE: OutputSpec = OutputSpec {
    name: "curve",
    file: "curve.png",
    about: "train/val loss and validation F1 per epoch",
};
const TRAIN_RECIPE: OutputSpec = OutputSpec {
    name: "recipe",
    file: "recipe.json",
    about: "these params with epochs = the best epoch and early stopping off: `params_from` of a final training on train + validation",
};

impl StageKind for Train {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "train",
            version: 5,
            about: "trains the U-Net (AdamW, BCE + Dice, warm-up + cosine) on augmented shards, early-stops on validation F1, resumes after a kill; without validation inputs (a final training) it keeps the last epoch",
            inputs: &[
                InputSpec {
                    name: "shards",
                    required: true,
                    about: "an augment-cache stage's shards",
                },
                InputSpec {
                    name: "val_images",
                    required: false,
                    about: "a split's val_images (leave out, with val_labels, for a final training)",
                },
                InputSpec {
                    name: "val_labels",
                    required: false,
                    about: "a split's val_labels",
                },
                InputSpec {
                    name: "preprocessing",
                    required: true,
                    about: "a split's preprocessing",
                },
                InputSpec {
                    name: "weights",
                    required: false,
                    about: "with encoder_weights = \"imagenet\": a pretrained stage's weights (or a .safetensors, torchvision or lukemelas layout)",
                },
            ],
            outputs: &[TRAIN_BUNDLE, TRAIN_METRICS, TRAIN_CURVE, TRAIN_RECIPE],
            uses_seed: true,
            // The spec is static, so a GPU run cannot claim `gpu = 1` here yet; all CPU threads
            // covers flex, and `resources = { gpu = 1 }` in the pipeline covers a GPU run.
            resources: ALL_CPUS,
            golden: &[
                (3, "49ff68ac9479bb65"),
                (4, "7ddd3e39132f3aaa"),
                (5, "f23109d24d94dd7e"),
            ],
        };
        &SPEC
    }

    fn device_param(&self) -> Option<&'static str> {
        Some("device")
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<training::TrainConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
        check_train_inputs(wired, params)
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let report = run_training(job, None)?;
        if job.input("val_images").is_none() {
            tracing::info!(
                "trained on {}: {} epoch(s) without validation; the bundle holds the last",
                report.device,
                report.history.len()
            );
            return Ok(());
        }
        tracing::info!(
            "trained on {}: best validation score {:.4} at epoch {} of {}{}",
            report.device,
            report.best_score,
            report.best_epoch,
            report.history.len(),
            if report.stopped_early {
                " (stopped early)"
            } else {
                ""
            }
        );
        Ok(())
    }

    fn tunable(&self) -> Option<&dyn Tunable> {
        Some(self)
    }
}

impl Tunable for Train {
    fn run_until(&self, job: &StageJob<'_>, epochs: usize) -> Result<TrialProgress, StageFailure> {
        let report = run_training(job, Some(epochs))?;
        Ok(TrialProgress {
            scores: report
                .history
                .iter()
                .map(|r| r.val_score.unwrap_or(f64::NAN))
                .collect(),
            complete: report.complete,
        })
    }

    fn scores(&self, out_dir: &std::path::Path) -> Result<Vec<f64>, StageFailure> {
        let path = out_dir.join(TRAIN_METRICS.file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))?;
        text.lines()
            .map(|line| {
                serde_json::from_str::<training::EpochRecord>(line)
                    .map(|r| r.val_score.unwrap_or(f64::NAN))
                    .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))
            })
            .collect()
    }
}

pub(super) fn check_train_inputs(wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
    match (wired.contains(&"val_images"), wired.contains(&"val_labels")) {
        (true, false) => return Err("has `val_images` but no `val_labels`: wire both (e.g. `\"@split.val_labels\"`) or neither".into()),
        (false, true) => return Err("has `val_labels` but no `val_images`: wire both (e.g. `\"@split.val_images\"`) or neither".into()),
        _ => {}
    }
    {
        let imagenet = params["encoder_weights"] == "imagenet";
        match (imagenet, wired.contains(&"weights")) {
            (true, false) => Err(
                "encoder_weights = \"imagenet\" needs `inputs.weights`, for example the output of a stage `{ name = \"imagenet\", kind = \"pretrained\", params = { encoder = \"efficientnet-lite0\" } }` wired as `inputs.weights = \"@imagenet.weights\"`".into(),
            ),
            (false, true) => Err(
                "has a `weights` input but encoder_weights is \"none\": set params.encoder_weights = \"imagenet\" to start from those weights, or drop the input".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// A train job, to the end or (a tuning trial's segment) until `until` epochs are done.
fn run_training(
    job: &StageJob<'_>,
    until: Option<usize>,
) -> Result<training::TrainReport, StageFailure> {
    let config: training::TrainConfig = job.config()?;
    let validation = match (job.input("val_images"), job.input("val_labels")) {
        (Some(images), Some(labels)) => Some((images, labels)),
        _ => None,
    };
    let inputs = training::TrainInputs {
        shards: job.required("shards")?,
        validation,
        preprocessing: job.required("preprocessing")?,
        encoder_weights: job.input("weights"),
    };
    let (bundle, metrics, curve, recipe) = (
        job.output(&TRAIN_BUNDLE),
        job.output(&TRAIN_METRICS),
        job.output(&TRAIN_CURVE),
        job.output(&TRAIN_RECIPE),
    );
    let outputs = training::TrainOutputs {
        bundle: &bundle,
        metrics: &metrics,
        curve: &curve,
        recipe: Some(&recipe),
    };
    Ok(training::train_until(
        &inputs,
        &config,
        job.seed,
        job.work_dir,
        &outputs,
        job.progress,
        until,
    )?)
}
