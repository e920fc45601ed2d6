//! The pipeline model: the TOML file read and checked, references between stages, the stage graph, keys resolved from inputs, and the stage-kind interface.

pub mod config;
pub mod dag;
pub mod executor;
pub mod kind;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod suggest;

use std::path::Path;

use crate::error::Result;

/// Reads and checks a pipeline file, its stage graph included: a cycle is an error here, before
/// any command looks at the stages.
pub fn load(path: &Path, registry: &registry::Registry) -> Result<(config::Pipeline, dag::Dag)> {
    let pipeline = config::Pipeline::load(path, registry)?;
    let dag = dag::Dag::new(&pipeline)?;
    Ok((pipeline, dag))
}
