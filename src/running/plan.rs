//! What a run would do, without doing it: each stage cached, stale (and why) or blocked.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::cache::digest::Digest;
use crate::cache::hash_memo::HashMemo;
use crate::cache::key;
use crate::cache::runlog::{self, StageRun};
use crate::cache::store::{ArtifactStore, Entry};
use crate::error::Result;
use crate::pipeline::config::Pipeline;
use crate::pipeline::dag::Dag;
use crate::pipeline::reference::InputRef;
use crate::pipeline::resolve::{self, Resolved};

#[derive(Debug, Clone)]
pub enum State {
    Cached {
        key: Digest,
    },
    Stale {
        key: Option<Digest>,
        reasons: Vec<String>,
    },
    Blocked {
        reason: String,
    },
}

pub struct Row {
    pub stage: usize,
    pub state: State,
    /// Set when the key is known.
    pub resolved: Option<Resolved>,
}

/// Why a stage with a known key and no entry must run, from its last run's key.
pub fn reasons(last: Option<&StageRun>, resolved: &Resolved) -> Vec<String> {
    match last {
        None => vec!["never run".to_owned()],
        Some(last) => {
            let parts = last.parts.as_ref().unwrap_or(&resolved.parts);
            let changes = key::changes(parts, &last.sources, &resolved.parts, &resolved.sources);
            if changes.is_empty() {
                vec![
                    "result no longer in the cache (removed by gc, or its run was stopped)"
                        .to_owned(),
                ]
            } else {
                changes
            }
        }
    }
}

/// How run records name a pipeline: its absolute path.
pub fn pipeline_id(pipeline: &Pipeline) -> String {
    std::path::absolute(&pipeline.path)
        .unwrap_or_else(|_| pipeline.path.clone())
        .to_string_lossy()
        .into_owned()
}

pub fn plan(
    pipeline: &Pipeline,
    dag: &Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
    stages: &[usize],
    forced: &[usize],
) -> Result<Vec<Row>> {
    // Run records are read only when a stage is stale and needs its reasons: a plan of a
    // cached pipeline reads none.
    let runs = std::cell::OnceCell::new();
    let runs = || runs.get_or_init(|| runlog::load_all(&store.runs_dir()));
    let last_runs = std::cell::OnceCell::new();
    let last_run = |name: &str| {
        last_runs
            .get_or_init(|| runlog::last_runs(runs(), &pipeline_id(pipeline)))
            .get(name)
            .copied()
    };
    let mut is_forced = vec![false; pipeline.stages.len()];
    for &i in forced {
        is_forced[i] = true;
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut states: BTreeMap<usize, State> = BTreeMap::new();
    let mut rows = Vec::new();
    for &i in stages {
        let stage = &pipeline.stages[i];
        let mut resolved = None;
        let upstream = dag.upstream(i);
        let state = if let Some(&b) = upstream
            .iter()
            .find(|u| matches!(states.get(u), Some(State::Blocked { .. })))
        {
            State::Blocked {
                reason: format!("upstream `{}` is blocked", pipeline.stages[b].name),
            }
        } else if let Some((name, written)) = stage.inputs.iter().find_map(|(n, r)| match r {
            InputRef::External { written, path } if !path.exists() => Some((n, written)),
            _ => None,
        }) {
            State::Blocked {
                reason: format!("input `{name}`: {written} does not exist"),
            }
        } else if let Some(&s) = upstream
            .iter()
            .find(|u| !entries.contains_key(&pipeline.stages[**u].name))
        {
            State::Stale {
                key: None,
                reasons: vec![format!("upstream `{}` will run", pipeline.stages[s].name)],
            }
        } else {
            let r = resolve::resolve(pipeline, stage, &entries, memo)?;
            let state = match store.lookup(&r.key)? {
                Some(entry) if !is_forced[i] => {
                    entries.insert(stage.name.clone(), entry);
                    State::Cached { key: r.key }
                }
                Some(_) => State::Stale {
                    key: Some(r.key),
                    reasons: vec!["--force".to_owned()],
                },
                None => State::Stale {
                    key: Some(r.key),
                    reasons: reasons(last_run(&stage.name), &r),
                },
            };
            resolved = Some(r);
            state
        };
        states.insert(i, state.clone());
        rows.push(Row {
            stage: i,
            state,
            resolved,
        });
    }
    Ok(rows)
}

pub fn render(pipeline: &Pipeline, rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| pipeline.stages[r.stage].name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let kind_width = rows
        .iter()
        .map(|r| pipeline.stages[r.stage].kind.spec().name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pipeline {} ({})",
        pipeline.name,
        pipeline.path.display()
    );
    if let Some(cluster) = pipeline.executor.slurm() {
        let _ = writeln!(
            out,
            "executor slurm: {} as jobs, tune trials as jobs; polled every {:.1}s",
            cluster.kinds.join(", "),
            cluster.poll_interval.as_secs_f64()
        );
    }
    let (mut cached, mut stale, mut blocked) = (0, 0, 0);
    for row in rows {
        let stage = &pipeline.stages[row.stage];
        let kind = stage.kind.spec().name;
        let (label, detail) = match &row.state {
            State::Cached { key } => {
                cached += 1;
                ("cached", key.short())
            }
            State::Stale { reasons, .. } => {
                stale += 1;
                let mut detail = reasons.join("; ");
                if let Some(place) = crate::running::remote::describe(pipeline, stage)
                    && place.starts_with("slurm job")
                {
                    detail.push_str(&format!(" → {place}"));
                }
                ("stale", detail)
            }
            State::Blocked { reason } => {
                blocked += 1;
                ("blocked", reason.clone())
            }
        };
        let _ = writeln!(
            out,
            "  {:width$}  {:kind_width$}  {label:7}  {detail}",
            stage.name, kind
        );
    }
    let _ = writeln!(
        out,
        "{} stage(s): {cached} cached, {stale} to run, {blocked} blocked",
        rows.len()
    );
    out
}
