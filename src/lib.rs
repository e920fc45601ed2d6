//! covseg's engine: a declarative pipeline (`pipeline.toml`) turned into a DAG of stages whose
//! results live in a content-addressed cache. It knows nothing about CT; `adapters` maps stage
//! kinds to the domain crate `covseg_stages`.

pub mod adapters;
pub mod atomic;
pub mod build;
pub mod cache_cmd;
pub mod cli;
pub mod config;
pub mod dag;
pub mod digest;
pub mod error;
pub mod exec;
pub mod executor;
pub mod explain;
pub mod hash_memo;
pub mod journal;
pub mod key;
pub mod kind;
pub mod metrics;
pub mod outputs;
pub mod plan;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod runlog;
pub mod store;
pub mod suggest;
pub mod trial;
pub mod tuner;
pub mod ui;

use std::fmt::Write;

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

/// `covseg kinds`: every kind with its inputs, outputs and default params.
pub fn kinds_text(registry: &registry::Registry) -> String {
    let mut out = String::new();
    for kind in registry.kinds() {
        let spec = kind.spec();
        let params = kind
            .params(&toml::Table::new())
            .map(|d| key::flatten(&d))
            .unwrap_or_default();
        let width = spec
            .inputs
            .iter()
            .map(|i| i.name.len())
            .chain(spec.outputs.iter().map(|o| o.name.len()))
            .chain(params.keys().map(String::len))
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "{} (v{}): {}", spec.name, spec.version, spec.about);
        for i in spec.inputs {
            let optional = if i.required { "" } else { "(optional) " };
            let _ = writeln!(out, "  input  {:width$}  {optional}{}", i.name, i.about);
        }
        for o in spec.outputs {
            let _ = writeln!(out, "  output {:width$}  {} — {}", o.name, o.file, o.about);
        }
        for (k, v) in params {
            let _ = writeln!(out, "  param  {k:width$}  default {v}");
        }
    }
    out
}
