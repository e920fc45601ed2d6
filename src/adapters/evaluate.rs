//! The `evaluate` kind: validation metrics, the threshold sweep and the report.

use covseg_stages::evaluate;

use super::{ALL_CPUS, write_json};
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Evaluate;

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
            version: 5,
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
            golden: &[
                (2, "1848fd64f41ae421"),
                (3, "aac0d6466da5a6ab"),
                (4, "c631523f3701262d"),
                // The report shows slices under 128 px enlarged by whole blocks (numbers unchanged;
                // the report is left out of the digest, which stays the same).
                (5, "c631523f3701262d"),
            ],
        };
        &SPEC
    }

    fn device_param(&self) -> Option<&'static str> {
        Some("device")
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
        write_json(&job.output(&EVAL_THRESHOLDS), &result.thresholds)?;
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
