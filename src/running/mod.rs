//! Running a pipeline: building one entry, the executor, what a run would do (plan) and why (explain), progress bars, the outputs folder and metrics across runs.

pub mod build;
pub mod exec;
pub mod executor;
pub mod explain;
pub mod metrics;
pub mod outputs;
pub mod plan;
pub mod remote;
pub mod single;
pub mod ui;
