//! covseg's engine: a declarative pipeline (`pipeline.toml`) turned into a DAG of stages whose
//! results live in a content-addressed cache. It knows nothing about CT; `adapters` maps stage
//! kinds to the domain crate `covseg_stages`.
//!
//! The folders draw the architecture, each depending only on those listed before it:
//! - `cache`: the content-addressed store, keys and digests, atomic writes, journals, run records;
//! - `pipeline`: the pipeline model (config, references, the DAG, key resolution, stage kinds);
//! - `running`: building entries, the executor, plan, explain, progress, the outputs folder,
//!   metrics across runs;
//! - `tuning`: the hyper-parameter search and its trials;
//! - `adapters`: the stage kinds, calling into `covseg_stages`;
//! - `cli`: the command line.

pub mod adapters;
pub mod cache;
pub mod cli;
pub mod error;
pub mod pipeline;
pub mod running;
pub mod serve;
pub mod slurm;
pub mod tuning;

use clap::Parser;

/// Runs the command line and returns the process exit code (see `cli::Cli`).
pub fn run() -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli::execute(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
