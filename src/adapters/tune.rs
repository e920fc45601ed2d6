//! The `tune` kind: the params and the search, run by `crate::tuning::tuner`.

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Tune;

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
            version: 3,
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
            golden: &[
                (1, "20b4d9f111851f90"),
                (2, "20b4d9f111851f90"),
                (3, "20b4d9f111851f90"),
            ],
        };
        &SPEC
    }

    fn device_param(&self) -> Option<&'static str> {
        Some("train.device")
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
        let base = super::Train.params(&train_raw).map_err(|e| ParamError {
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
                crate::tuning::params::trial_params(&super::Train, &base, &sample)
                    .map_err(|m| fail(format!("space.{path} = {v}: {m}"), None))?;
            }
        }
        value["train"] = base;
        Ok(value)
    }

    fn check_inputs(&self, wired: &[&str], params: &serde_json::Value) -> Result<(), String> {
        super::train::check_train_inputs(wired, &params["train"])
    }

    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        let config: covseg_stages::tune::TuneConfig = job.config()?;
        let outputs = crate::tuning::tuner::TuneOutputs {
            csv: job.output(&TUNE_CSV),
            json: job.output(&TUNE_JSON),
            best_params: job.output(&TUNE_BEST),
            plots: job.output(&TUNE_PLOTS),
        };
        crate::tuning::tuner::run(job, &super::Train, &config, &outputs)
    }
}
