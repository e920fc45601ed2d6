//! The `predict` kind: a bundle applied to new slices.

use covseg_stages::{predict, training};

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Predict;

const PREDICT_OUT: OutputSpec = OutputSpec {
    name: "predictions",
    file: "predictions",
    about: "folder: masks.npy (N,H,W,2) bool for .npy input, <id>.png labels (0/1 GGO/2 consolidation) for an image folder, or for volumes <name>.nii.gz labels aligned with the input (3 = other lung) with <name>.report.json/.html",
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
            version: 3,
            about: "applies a bundle (with its thresholds) to new slices: the Kaggle test .npy, an image folder, or CT volumes (NIfTI, DICOM series) with a lung-involvement report; optional flip TTA",
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
                    name: "volumes",
                    required: false,
                    about: "CT volumes in HU: a .nii/.nii.gz file, a DICOM series folder, or a folder of .nii.gz files",
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
            golden: &[
                (1, "ed833657ba0bdf17"),
                (2, "ed833657ba0bdf17"),
                (3, "ed833657ba0bdf17"),
            ],
        };
        &SPEC
    }

    fn device_param(&self) -> Option<&'static str> {
        Some("device")
    }

    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<predict::PredictConfig>(raw, |c| c.validate().map_err(|e| e.to_string()))
    }

    fn check_inputs(&self, wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        let given: Vec<&str> = ["images", "folder", "volumes"]
            .into_iter()
            .filter(|n| wired.contains(n))
            .collect();
        match given.len() {
            1 => Ok(()),
            0 => Err(
                "needs `images` (Kaggle .npy), `folder` (an image folder) or `volumes` (NIfTI or DICOM)"
                    .into(),
            ),
            _ => Err(format!(
                "give one of `images`, `folder` and `volumes`, not {}",
                given.join(" and ")
            )),
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
        let input = match (job.input("folder"), job.input("volumes")) {
            (Some(folder), _) => predict::PredictInput::Folder(folder.to_owned()),
            (None, Some(volumes)) => predict::PredictInput::Volumes(volumes.to_owned()),
            (None, None) => predict::PredictInput::Kaggle(job.required("images")?.to_owned()),
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
