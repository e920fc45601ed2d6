//! `covseg exec KIND`: runs one stage kind outside the pipeline and its cache, with inputs and
//! params from the command line. For debugging a stage, and for other orchestrators (DVC, Slurm).

use std::path::{Path, PathBuf};

use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::kind::StageJob;
use crate::pipeline::registry::Registry;
use crate::pipeline::suggest;

/// `NAME=VALUE`, split at the first `=`.
fn pair(text: &str, what: &str) -> Result<(String, String)> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| Diagnostic::new(format!("--{what} `{text}` is not NAME=VALUE")).into())
}

/// A param value as TOML (`3`, `0.5`, `"val"`, `[1, 2]`), or else as a plain string (`val`).
fn param_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

pub fn exec(
    registry: &Registry,
    kind: &str,
    inputs: &[String],
    params: &[String],
    seed: u64,
    out: &Path,
) -> Result<String> {
    let kind = registry.get(kind).ok_or_else(|| {
        Diagnostic::new(format!("unknown stage kind `{kind}`"))
            .help(suggest::help(kind, registry.names()))
    })?;
    let spec = kind.spec();
    let mut table = toml::Table::new();
    for p in params {
        let (k, v) = pair(p, "param")?;
        table.insert(k, param_value(&v));
    }
    let params = kind.params(&table).map_err(|e| {
        let mut d = Diagnostic::new(format!("--param: {}", e.message));
        d.help = e.help;
        d
    })?;
    let mut resolved = std::collections::BTreeMap::new();
    for i in inputs {
        let (name, path) = pair(i, "input")?;
        if !spec.inputs.iter().any(|s| s.name == name) {
            return Err(
                Diagnostic::new(format!("kind {} has no input `{name}`", spec.name))
                    .help(suggest::help(&name, spec.inputs.iter().map(|s| s.name)))
                    .into(),
            );
        }
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(Diagnostic::new(format!(
                "--input {name}: {} does not exist",
                path.display()
            ))
            .into());
        }
        resolved.insert(name, path);
    }
    if let Some(missing) = spec
        .inputs
        .iter()
        .find(|i| i.required && !resolved.contains_key(i.name))
    {
        return Err(Diagnostic::new(format!(
            "kind {} needs --input {}=PATH ({})",
            spec.name, missing.name, missing.about
        ))
        .into());
    }
    let wired: Vec<&str> = resolved.keys().map(String::as_str).collect();
    kind.check_inputs(&wired, &params)
        .map_err(|m| Diagnostic::new(format!("kind {}: {m}", spec.name)))?;
    // Written into a hidden folder first and moved into place only on success.
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let staging = out.join(format!(".covseg-exec.{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let work = staging.join(".work");
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let job = StageJob {
        inputs: resolved,
        params: &params,
        seed,
        out_dir: &staging,
        work_dir: &work,
        progress: &covseg_stages::NoProgress,
        engine: None,
    };
    let result = kind.run(&job);
    let finish = match result {
        Ok(()) => spec.outputs.iter().try_for_each(|o| {
            let (from, to) = (staging.join(o.file), out.join(o.file));
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))
        }),
        Err(f) => Err(Error::StagesFailed {
            failures: vec![(spec.name.to_owned(), f.message)],
            input_error: f.input_error,
        }),
    };
    let _ = std::fs::remove_dir_all(&staging);
    finish?;
    let written: Vec<String> = spec
        .outputs
        .iter()
        .map(|o| out.join(o.file).display().to_string())
        .collect();
    Ok(format!("wrote {}\n", written.join(", ")))
}
