//! `covseg stage NAME`: one stage of a pipeline, built in this process against the (shared) cache.
//! Its upstream stages must be in the cache already. This is what a Slurm job of a stage runs;
//! the submitting `covseg run` then finds the entry like any other.

use std::collections::BTreeMap;

use tracing::info;

use crate::cache::hash_memo::HashMemo;
use crate::cache::runlog::StageOutcome;
use crate::cache::store::{ArtifactStore, Entry};
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::config::Pipeline;
use crate::pipeline::dag::Dag;
use crate::pipeline::resolve;
use crate::running::ui::Ui;

pub struct SingleOptions<'a> {
    /// The key the submitter computed: a pipeline edited since then is an error, not a result
    /// under another key.
    pub key: Option<&'a str>,
    /// Worker threads (default: the stage's `resources.cpu`).
    pub threads: Option<u32>,
    pub force: bool,
}

/// Builds (or finds) the stage's entry; returns what happened.
pub fn run(
    pipeline: &Pipeline,
    dag: &Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
    index: usize,
    options: &SingleOptions<'_>,
    ui: &Ui,
) -> Result<(Entry, StageOutcome)> {
    let stage = &pipeline.stages[index];
    crate::pipeline::resolve::check_external(pipeline, &dag.selection(&[index]))?;
    let _gc_guard = store.lock_shared()?;
    // The entries of a stage's direct upstream stages, by name.
    let upstream_of = |i: usize, entries: &BTreeMap<String, Entry>| -> BTreeMap<String, Entry> {
        dag.upstream(i)
            .into_iter()
            .filter_map(|d| {
                let name = &pipeline.stages[d].name;
                entries.get(name).map(|e| (name.clone(), e.clone()))
            })
            .collect()
    };
    // Upstream entries, in graph order, each found in the cache.
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for &u in &dag.with_ancestors(&[index]) {
        if u == index {
            continue;
        }
        let up = &pipeline.stages[u];
        let resolved = resolve::resolve(pipeline, up, &upstream_of(u, &entries), memo)?;
        let Some(entry) = store.lookup(&resolved.key)? else {
            return Err(Diagnostic::new(format!(
                "stage `{}` needs `{}`, which is not in the cache {}",
                stage.name,
                up.name,
                store.root().display()
            ))
            .help(format!(
                "run `covseg run --stage {}` first (with a Slurm executor, `covseg run` sends each stage once its upstream is done)",
                up.name
            ))
            .into());
        };
        entries.insert(up.name.clone(), entry);
    }
    let resolved = resolve::resolve(pipeline, stage, &upstream_of(index, &entries), memo)?;
    if let Some(expected) = options.key
        && expected != resolved.key.hex()
    {
        return Err(Diagnostic::new(format!(
            "stage `{}` resolves to key {}, not the {} it was sent for",
            stage.name,
            resolved.key.short(),
            &expected[..expected.len().min(12)]
        ))
        .help("the pipeline file or an input changed after the job was submitted; run `covseg run` again")
        .into());
    }
    let threads = options.threads.unwrap_or(stage.resources.cpu).max(1);
    info!(stage = %stage.name, key = %resolved.key.short(), threads, "building in this process");
    let built = crate::running::executor::execute(
        pipeline,
        stage,
        &resolved,
        store,
        options.force,
        ui,
        threads,
    );
    memo.save()?;
    built.map_err(|f| Error::StagesFailed {
        failures: vec![(stage.name.clone(), f.message)],
        input_error: f.input_error,
    })
}
