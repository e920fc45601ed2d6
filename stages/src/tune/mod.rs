//! Hyper-parameter search over the train params: the search space, the samplers (random, TPE),
//! asynchronous successive halving, and the trials table and plots. Running trials and keeping
//! their results is the caller's business (the engine runs each trial as a cached run).

mod config;
mod report;
mod sampler;
mod space;
mod study;

pub use config::TuneConfig;
pub use report::{TrialRow, TrialsTable, write_outputs};
pub use sampler::{SamplerKind, propose};
pub use space::{Distribution, Sample, SearchSpace, apply, get_path};
pub use study::{Job, PrunerConfig, PrunerKind, Study, StudySettings, Trial, TrialState};
