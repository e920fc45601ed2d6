//! `covseg explain STAGE`: the parts of a stage's key and what changed since its last run.

use std::fmt::Write;

use crate::cache::hash_memo::HashMemo;
use crate::cache::key;
use crate::cache::runlog;
use crate::cache::store::ArtifactStore;
use crate::error::Result;
use crate::pipeline::config::Pipeline;
use crate::running::plan::{self, State};

pub fn explain(
    pipeline: &Pipeline,
    dag: &crate::pipeline::dag::Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
    index: usize,
) -> Result<String> {
    let stage = &pipeline.stages[index];
    let spec = stage.kind.spec();
    let stages = dag.with_ancestors(&[index]);
    let rows = plan::plan(pipeline, dag, store, memo, &stages, &[])?;
    let row = rows
        .iter()
        .find(|r| r.stage == index)
        .expect("the stage is in its own plan");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stage {} (kind {} v{}) at {}",
        stage.name,
        spec.name,
        spec.version,
        pipeline.location(stage)
    );
    let state = match &row.state {
        State::Cached { key } => format!("cached, key {key}"),
        State::Stale { key: Some(key), .. } => format!("stale, key {key}"),
        State::Stale { key: None, .. } => {
            "stale, key not known until upstream stages run".to_owned()
        }
        State::Blocked { reason } => format!("blocked: {reason}"),
    };
    let _ = writeln!(out, "state: {state}");
    if let Some(place) = crate::running::remote::describe(pipeline, stage) {
        let _ = writeln!(out, "runs: {place} (where it runs is not part of the key)");
    }
    let _ = writeln!(out, "key parts:");
    // (label, value) rows, printed with the values in one column however long the labels.
    let mut rows: Vec<(String, String)> = vec![
        ("kind".into(), format!("{} v{}", spec.name, spec.version)),
        ("covseg".into(), key::COVSEG_VERSION.to_owned()),
    ];
    if spec.uses_seed {
        rows.push(("seed".into(), pipeline.seed.to_string()));
    }
    let params = row
        .resolved
        .as_ref()
        .map_or(&stage.params, |r| &r.parts.params);
    if let Some(class) = stage.kind.device_class(params) {
        rows.push((
            "device class".into(),
            format!("{class} (what `device` resolves to here)"),
        ));
    }
    for (k, v) in key::flatten(params) {
        rows.push((format!("params.{k}"), v));
    }
    for (name, r) in stage
        .inputs
        .iter()
        .map(|(n, r)| (n.as_str(), r))
        .chain(stage.params_from.as_ref().map(|r| ("params_from", r)))
    {
        let digest = match &row.resolved {
            Some(_) if name == "params_from" => "(merged into the params above)".to_owned(),
            resolved => resolved
                .as_ref()
                .and_then(|res| res.parts.inputs.get(name))
                .map_or_else(|| "(not yet computed)".to_owned(), |d| d.short()),
        };
        rows.push((format!("input {name}"), format!("{r}  {digest}")));
    }
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (label, value) in rows {
        let _ = writeln!(out, "  {label:width$}  {value}");
    }
    let runs = runlog::load_all(&store.runs_dir());
    match runlog::last_run_of(&runs, &plan::pipeline_id(pipeline), &stage.name) {
        None => {
            let _ = writeln!(out, "last run: none recorded in this cache");
        }
        Some((record, last)) => {
            let _ = writeln!(
                out,
                "last run: {} ({}), key {}",
                record.id,
                last.outcome.label(),
                last.key.map(|k| k.short()).unwrap_or_default()
            );
            match (&row.resolved, &last.parts) {
                (Some(now), Some(then)) => {
                    let changes = key::changes(then, &last.sources, &now.parts, &now.sources);
                    if changes.is_empty() {
                        let _ = writeln!(out, "changes since then: none");
                    } else {
                        let _ = writeln!(out, "changes since then:");
                        for c in changes {
                            let _ = writeln!(out, "  {c}");
                        }
                    }
                }
                (None, Some(then)) => {
                    let _ = writeln!(
                        out,
                        "changes since then (inputs from upstream stages are compared once they run):"
                    );
                    let mut partial = then.clone();
                    partial.inputs.clear();
                    let mut now = partial.clone();
                    now.params = stage.params.clone();
                    now.covseg_version = key::COVSEG_VERSION.to_owned();
                    now.kind_version = spec.version;
                    now.seed = spec.uses_seed.then_some(pipeline.seed);
                    for c in key::changes(&partial, &last.sources, &now, &last.sources) {
                        let _ = writeln!(out, "  {c}");
                    }
                    if let State::Stale { reasons, .. } = &row.state {
                        for r in reasons {
                            let _ = writeln!(out, "  {r}");
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}
