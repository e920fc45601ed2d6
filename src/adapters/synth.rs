//! The `synth` kind: synthetic CT phantoms written as Kaggle-format `.npy` files.

use covseg_stages::data::{kaggle, phantom};

use super::ALL_CPUS;
use crate::pipeline::kind::{
    KindSpec, OutputSpec, ParamError, StageFailure, StageJob, StageKind, typed_params,
};

pub(super) struct Synth;

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
            golden: &[(1, "5411a385eaeeedca")],
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
