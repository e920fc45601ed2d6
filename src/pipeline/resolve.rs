//! Turns a stage and the entries of its upstream stages into its key: input digests (external files
//! through the hash memo, stage outputs from their entries) and params merged with `params_from`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cache::digest::Digest;
use crate::cache::hash_memo::HashMemo;
use crate::cache::key::{InputSources, KeyParts};
use crate::cache::store::Entry;
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::config::{Pipeline, Stage};
use crate::pipeline::reference::InputRef;

/// A stage whose key is known.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub parts: KeyParts,
    pub key: Digest,
    pub sources: InputSources,
    pub inputs: BTreeMap<String, PathBuf>,
}

/// Checks that every external input of the stages exists; names the first missing one and says
/// how to get it.
pub fn check_external(pipeline: &Pipeline, stages: &[usize]) -> Result<()> {
    for &i in stages {
        let stage = &pipeline.stages[i];
        for (name, r) in &stage.inputs {
            if let InputRef::External { written, path } = r
                && !path.exists()
            {
                return Err(missing_input(pipeline, stage, name, written).into());
            }
        }
    }
    Ok(())
}

pub fn missing_input(pipeline: &Pipeline, stage: &Stage, input: &str, written: &str) -> Diagnostic {
    let help = pipeline
        .data_hint
        .clone()
        .unwrap_or_else(|| "create the file, or point the input at an existing one".to_owned());
    Diagnostic::new(format!(
        "stage `{}`: input `{input}` is missing: {written} does not exist",
        stage.name
    ))
    .at(pipeline.location(stage))
    .help(help)
}

/// The stage's key, given the entries of all its upstream stages (`upstream` must hold them).
pub fn resolve(
    pipeline: &Pipeline,
    stage: &Stage,
    upstream: &BTreeMap<String, Entry>,
    memo: &HashMemo,
) -> Result<Resolved> {
    let mut inputs = BTreeMap::new();
    let mut digests = BTreeMap::new();
    let mut sources = InputSources::new();
    for (name, r) in &stage.inputs {
        let (path, digest) = locate(pipeline, stage, name, r, upstream, memo)?;
        sources.insert(name.clone(), r.to_string());
        inputs.insert(name.clone(), path);
        digests.insert(name.clone(), digest);
    }
    let params = match &stage.params_from {
        None => stage.params.clone(),
        // The merged params are in the key, not the file's digest: an upstream rerun that gives
        // the same params (a tune whose best trial did not change) leaves this stage cached.
        Some(r) => {
            let (path, _digest) = locate(pipeline, stage, "params_from", r, upstream, memo)?;
            sources.insert("params_from".into(), r.to_string());
            let params = merged_params(pipeline, stage, r, &path)?;
            let wired: Vec<&str> = stage.inputs.keys().map(String::as_str).collect();
            stage
                .kind
                .check_inputs(&wired, &params)
                .map_err(|message| {
                    Diagnostic::new(format!(
                        "stage `{}`: with the params from {r}: {message}",
                        stage.name
                    ))
                    .at(pipeline.location(stage))
                })?;
            params
        }
    };
    let parts = crate::pipeline::kind::key_parts(stage.kind, params, pipeline.seed, digests);
    Ok(Resolved {
        key: parts.key(),
        parts,
        sources,
        inputs,
    })
}

fn locate(
    pipeline: &Pipeline,
    stage: &Stage,
    name: &str,
    r: &InputRef,
    upstream: &BTreeMap<String, Entry>,
    memo: &HashMemo,
) -> Result<(PathBuf, Digest)> {
    match r {
        InputRef::External { written, path } => {
            if !path.exists() {
                return Err(missing_input(pipeline, stage, name, written).into());
            }
            Ok((path.clone(), memo.digest(path)?))
        }
        InputRef::Output { stage: up, output } => {
            let entry = upstream.get(up).ok_or_else(|| Error::Corrupt {
                path: pipeline.cache_dir.clone(),
                message: format!(
                    "internal: stage `{}` resolved before its upstream `{up}`",
                    stage.name
                ),
            })?;
            let record = entry.record.outputs.get(output).ok_or_else(|| Error::Corrupt {
                path: entry.dir.join("entry.json"),
                message: format!("the entry of `{up}` has no output `{output}`; run `covseg cache verify --fix`"),
            })?;
            Ok((entry.out_dir().join(&record.path), record.digest))
        }
    }
}

/// The written params overlaid with the upstream JSON object, normalised by the kind.
fn merged_params(
    pipeline: &Pipeline,
    stage: &Stage,
    r: &InputRef,
    path: &std::path::Path,
) -> Result<serde_json::Value> {
    let fail = |message: String| -> Error {
        Diagnostic::new(format!(
            "stage `{}`: params_from {r}: {message}",
            stage.name
        ))
        .at(pipeline.location(stage))
        .help("params_from must name a JSON object whose keys are params of this stage's kind")
        .into()
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(fail("not a JSON object".into()));
    };
    let mut table = stage.raw_params.clone();
    overlay(&mut table, object).map_err(fail)?;
    stage.kind.params(&table).map_err(|e| fail(e.message))
}

/// Writes `object` over `table`: nested tables merge key by key, `null` unsets a key (an optional
/// param left at its default), anything else replaces.
fn overlay(
    table: &mut toml::Table,
    object: serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    for (k, v) in object {
        match v {
            serde_json::Value::Null => {
                table.remove(&k);
            }
            serde_json::Value::Object(inner) => {
                if !matches!(table.get(&k), Some(toml::Value::Table(_))) {
                    table.insert(k.clone(), toml::Value::Table(toml::Table::new()));
                }
                if let Some(toml::Value::Table(sub)) = table.get_mut(&k) {
                    overlay(sub, inner).map_err(|m| format!("{k}.{m}"))?;
                }
            }
            other => {
                let value: toml::Value =
                    serde_json::from_value(other).map_err(|e| format!("{k}: {e}"))?;
                table.insert(k, value);
            }
        }
    }
    Ok(())
}
