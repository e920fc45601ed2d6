//! `covseg metrics`: the metrics of every stage that writes a `metrics` JSON output (evaluate,
//! crossval), across the pipeline's runs, next to the params that differ between those runs —
//! what `dvc metrics diff` and `dvc exp show` give. As a text table, Markdown, JSON, and a chart
//! of each stage's `score` per run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::cache::digest::Digest;
use crate::cache::runlog::{self, RunRecord, StageOutcome};
use crate::cache::store::ArtifactStore;
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::config::Pipeline;
use crate::pipeline::registry::Registry;
use crate::running::plan::pipeline_id;

/// How the table is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// One run with results: its metrics (`stage.metric` → value) and params (`stage.param` →
/// value as written in the key).
#[derive(Debug, Clone)]
pub struct RunMetrics {
    pub id: String,
    pub started_unix_ms: u128,
    pub metrics: BTreeMap<String, f64>,
    pub params: BTreeMap<String, String>,
    /// The entries the metrics came from; runs with the same ones show the same results.
    results: BTreeSet<Digest>,
}

/// The newest `runs` runs of `pipeline` with metrics, newest first. A run whose metric results are
/// the same entries as a newer one's (a rerun that changed nothing they depend on) is left out.
pub fn collect(
    pipeline: &Pipeline,
    registry: &Registry,
    store: &ArtifactStore,
    runs: usize,
) -> Result<Vec<RunMetrics>> {
    let id = pipeline_id(pipeline);
    let mut out: Vec<RunMetrics> = Vec::new();
    for (_, record) in runlog::load_all(&store.runs_dir()) {
        if record.pipeline != id {
            continue;
        }
        let Some(run) = run_metrics(&record, registry, store)? else {
            continue;
        };
        if out.iter().any(|newer| newer.results == run.results) {
            continue;
        }
        out.push(run);
        if out.len() == runs {
            break;
        }
    }
    Ok(out)
}

fn run_metrics(
    record: &RunRecord,
    registry: &Registry,
    store: &ArtifactStore,
) -> Result<Option<RunMetrics>> {
    let mut metrics = BTreeMap::new();
    let mut params = BTreeMap::new();
    let mut results = BTreeSet::new();
    for stage in &record.stages {
        if let Some(parts) = &stage.parts {
            for (k, v) in crate::cache::key::flatten(&parts.params) {
                params.insert(format!("{}.{k}", stage.name), v);
            }
            if let Some(seed) = parts.seed {
                params.insert(format!("{}.seed", stage.name), seed.to_string());
            }
        }
        let done = matches!(stage.outcome, StageOutcome::Hit | StageOutcome::Ran);
        let writes_metrics = registry.get(&stage.kind).is_some_and(|k| {
            k.spec()
                .outputs
                .iter()
                .any(|o| o.name == "metrics" && o.file.ends_with(".json"))
        });
        let (true, true, Some(key)) = (done, writes_metrics, stage.key) else {
            continue;
        };
        // An entry gc removed since: the run's metrics are gone with it.
        let Some(path) = store.lookup(&key)?.and_then(|e| e.output_path("metrics")) else {
            continue;
        };
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?)
                .map_err(|e| Error::Corrupt {
                    path: path.clone(),
                    message: format!("not JSON: {e}"),
                })?;
        let mut flat = BTreeMap::new();
        flatten_numbers(&value, "", &mut flat);
        for (k, v) in flat {
            metrics.insert(format!("{}.{k}", stage.name), v);
        }
        results.insert(key);
    }
    if results.is_empty() {
        return Ok(None);
    }
    Ok(Some(RunMetrics {
        id: record.id.clone(),
        started_unix_ms: record.started_unix_ms,
        metrics,
        params,
        results,
    }))
}

/// Every number of a metrics document by its dotted path. Arrays of objects are keyed by each
/// object's first string field (`classes: [{class: "ggo", f1}]` → `classes.ggo.f1`); other arrays (a sweep,
/// a curve) are series, not metrics, and are left out.
fn flatten_numbers(value: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    use serde_json::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_owned(), x);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten_numbers(v, &join(k), out);
            }
        }
        Value::Array(items) => {
            for item in items {
                let label = item
                    .as_object()
                    .and_then(|o| o.values().find_map(|v| v.as_str()));
                if let Some(label) = label {
                    flatten_numbers(item, &join(label), out);
                }
            }
        }
        _ => {}
    }
}

/// The params whose values are not the same in every run (absent counts as a value).
pub fn differing_params(runs: &[RunMetrics]) -> Vec<String> {
    let names: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    names
        .into_iter()
        .filter(|name| {
            let values: BTreeSet<Option<&String>> =
                runs.iter().map(|r| r.params.get(*name)).collect();
            values.len() > 1
        })
        .cloned()
        .collect()
}

/// `2026-12-01 19:52:03` (UTC) of a Unix time in milliseconds.
fn utc(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 1e-3 {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

/// Column names of the runs, newest first: `A`, `B`, … `Z`, `AA`, ….
fn label(i: usize) -> String {
    let mut n = i + 1;
    let mut s = Vec::new();
    while n > 0 {
        n -= 1;
        s.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII letters")
}

/// The table: one row per metric, then one per differing param; one column per run.
pub fn render(runs: &[RunMetrics], format: Format) -> String {
    let params = differing_params(runs);
    if format == Format::Json {
        let value = serde_json::json!({
            "runs": runs.iter().map(|r| serde_json::json!({
                "id": r.id,
                "started": utc(r.started_unix_ms),
                "started_unix_ms": r.started_unix_ms as u64,
                "metrics": r.metrics,
                "params": params.iter().map(|p| (p.clone(), r.params.get(p).cloned())).collect::<BTreeMap<_, _>>(),
            })).collect::<Vec<_>>(),
            "differing_params": params,
        });
        return format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("JSON of plain data")
        );
    }
    let metric_names: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for name in &metric_names {
        let mut row = vec![(*name).clone()];
        row.extend(runs.iter().map(|r| {
            r.metrics
                .get(*name)
                .map_or_else(|| "-".to_owned(), |&x| number(x))
        }));
        rows.push(row);
    }
    let first_param_row = rows.len();
    for name in &params {
        let mut row = vec![name.clone()];
        row.extend(runs.iter().map(|r| {
            r.params
                .get(name)
                .cloned()
                .unwrap_or_else(|| "-".to_owned())
        }));
        rows.push(row);
    }
    let mut header = vec!["metric".to_owned()];
    header.extend((0..runs.len()).map(label));
    let mut out = String::new();
    match format {
        Format::Markdown => {
            let _ = writeln!(out, "| run | started (UTC) | id |\n|---|---|---|");
            for (i, r) in runs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "| {} | {} | `{}` |",
                    label(i),
                    utc(r.started_unix_ms),
                    r.id
                );
            }
            let _ = writeln!(out, "\n| {} |", header.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
            for (i, row) in rows.iter().enumerate() {
                let mut row = row.clone();
                if i >= first_param_row {
                    row[0] = format!("param `{}`", row[0]);
                } else {
                    row[0] = format!("`{}`", row[0]);
                }
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
        }
        _ => {
            let _ = writeln!(out, "runs, newest first:");
            for (i, r) in runs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {:>2}  {} UTC  {}",
                    label(i),
                    utc(r.started_unix_ms),
                    r.id
                );
            }
            let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: &[String]| {
                let mut s = format!("{:<w$}", cells[0], w = widths[0]);
                for (cell, w) in cells[1..].iter().zip(&widths[1..]) {
                    let _ = write!(s, "  {cell:>w$}");
                }
                s.trim_end().to_owned()
            };
            let _ = writeln!(out, "\n{}", line(&header));
            for (i, row) in rows.iter().enumerate() {
                if i == first_param_row {
                    let _ = writeln!(out, "\nparams that differ");
                }
                let _ = writeln!(out, "{}", line(row));
            }
            if params.is_empty() && runs.len() > 1 {
                let _ = writeln!(out, "\nno param differs between these runs");
            }
        }
    }
    out
}

/// A chart of each stage's `score` per run, oldest left, as a PNG.
pub fn plot(runs: &[RunMetrics], path: &Path) -> Result<()> {
    use covseg_stages::plot::{Chart, Series, save};
    let scores: BTreeSet<&String> = runs
        .iter()
        .flat_map(|r| r.metrics.keys())
        .filter(|k| k.ends_with(".score"))
        .collect();
    let series = scores
        .into_iter()
        .map(|name| Series {
            name: name.trim_end_matches(".score").to_owned(),
            points: runs
                .iter()
                .rev()
                .enumerate()
                .filter_map(|(i, r)| r.metrics.get(name).map(|&y| ((i + 1) as f64, y)))
                .collect(),
            scatter: false,
        })
        .collect();
    let chart = Chart {
        title: "score per run".to_owned(),
        x_label: format!(
            "run (1 = oldest of {}, {} = newest)",
            runs.len(),
            runs.len()
        ),
        y_label: "score".to_owned(),
        log_x: false,
        series,
    };
    let tmp = tmp_beside(path);
    save(&tmp, &chart, 800, 450)
        .map_err(|e| Diagnostic::new(format!("cannot draw {}: {e}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn tmp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// `covseg metrics`: the runs' table, and the chart when asked; an error when no run has metrics.
pub fn metrics(
    pipeline: &Pipeline,
    registry: &Registry,
    store: &ArtifactStore,
    runs: usize,
    format: Format,
    plot_to: Option<&Path>,
) -> Result<String> {
    let found = collect(pipeline, registry, store, runs.max(1))?;
    if found.is_empty() {
        return Err(Diagnostic::new(format!(
            "no run of {} has metrics in the cache",
            pipeline.path.display()
        ))
        .help("metrics come from stages with a `metrics` JSON output (evaluate); run the pipeline first")
        .into());
    }
    if let Some(path) = plot_to {
        plot(&found, path)?;
    }
    Ok(render(&found, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_labels() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_152_446_850), "2026-12-01 19:14:06");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(label(0), "A");
        assert_eq!(label(25), "Z");
        assert_eq!(label(26), "AA");
    }

    #[test]
    fn numbers_of_a_metrics_document_by_path() {
        let doc = serde_json::json!({
            "score": 0.5,
            "classes": [{"class": "ggo", "f1": 0.25, "counts": {"tp": 3}}],
            "sweep": [{"threshold": 0.1, "ggo": 0.2}],
            "tta": "none",
        });
        let mut flat = BTreeMap::new();
        flatten_numbers(&doc, "", &mut flat);
        let keys: Vec<&str> = flat.keys().map(String::as_str).collect();
        assert_eq!(keys, ["classes.ggo.counts.tp", "classes.ggo.f1", "score"]);
    }
}
