//! The adapter table: the one place where engine stage kinds meet the domain crate's functions.
//! Each adapter declares inputs, outputs and params, and calls into `covseg_stages`.

use crate::pipeline::kind::{Resources, StageFailure};
use crate::pipeline::registry::Registry;

mod augment;
mod eda;
mod evaluate;
mod predict;
mod pretrained;
mod split;
mod stats;
mod submission;
mod synth;
mod synth_volumes;
mod train;
mod tune;

pub(crate) use train::Train;

/// Every stage kind covseg knows.
pub fn registry() -> Registry {
    Registry::new(vec![
        &synth::Synth,
        &synth_volumes::SynthVolumes,
        &split::Split,
        &augment::AugmentCache,
        &pretrained::Pretrained,
        &train::Train,
        &tune::Tune,
        &evaluate::Evaluate,
        &predict::Predict,
        &submission::PackageSubmission,
        &stats::Stats,
        &eda::Eda,
    ])
}

/// Kinds whose work is spread over all the threads the engine gives them.
const ALL_CPUS: Resources = Resources {
    gpu: 0,
    cpu: u32::MAX,
};

fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), StageFailure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| StageFailure::internal(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| StageFailure::internal(format!("{}: {e}", path.display())))
}
