//! The `stats` kind: dataset statistics per mask class.

use covseg_stages::data::{kaggle, stats};

use super::ALL_CPUS;
use crate::pipeline::kind::{
    InputSpec, KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Stats;

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
            golden: &[(1, "9064a62f670e457c")],
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
