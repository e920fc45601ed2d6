//! What a search leaves behind: the trials table (CSV and JSON), the best params, and plots of the
//! score per trial and against each numeric searched param.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::space::{Distribution, Sample, SearchSpace};
use super::study::TrialState;
use crate::plot::{Chart, Series};
use crate::{Error, Result};

/// One row of the trials table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRow {
    pub trial: usize,
    pub state: TrialState,
    /// The searched params' values.
    pub params: Sample,
    /// Epochs it ran.
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    pub best_score: Option<f64>,
    /// Validation score after each epoch.
    pub scores: Vec<f64>,
    /// Wall time of its runs.
    pub seconds: f64,
    /// Runs it took (1 + promotions, + reruns after a kill).
    pub segments: usize,
    /// The cache key of its training run.
    pub key: String,
    pub error: Option<String>,
    /// When each of its segments ran: `[start, end]` in Unix milliseconds, as the trial process
    /// measured them (segments of different trials overlap when trials run in parallel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ran_ms: Vec<[u64; 2]>,
    /// Why a segment of it ran again: the machine lost it (a cancelled job, a failed node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<String>,
}

/// `trials.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialsTable {
    /// Epoch counts at which ASHA compared trials.
    pub rungs: Vec<usize>,
    pub best_trial: usize,
    pub best_score: f64,
    /// The complete train params of the best trial (also `best_params.json`).
    pub best_params: Value,
    pub trials: Vec<TrialRow>,
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl TrialsTable {
    /// The table as CSV: one row per trial, one column per searched param.
    pub fn csv(&self, space: &SearchSpace) -> String {
        let mut out = String::from("trial,state");
        for path in space.keys() {
            let _ = write!(out, ",{}", csv_field(path));
        }
        out.push_str(",epochs,best_epoch,best_score,seconds,segments,scores,key,error,retries\n");
        for row in &self.trials {
            let _ = write!(out, "{},{}", row.trial, state_name(row.state));
            for path in space.keys() {
                let value = row.params.get(path).map(plain).unwrap_or_default();
                let _ = write!(out, ",{}", csv_field(&value));
            }
            let scores: Vec<String> = row.scores.iter().map(|s| format!("{s:.6}")).collect();
            let _ = writeln!(
                out,
                ",{},{},{},{:.3},{},{},{},{},{}",
                row.epochs,
                opt(row.best_epoch),
                opt(row.best_score.map(|s| format!("{s:.6}"))),
                row.seconds,
                row.segments,
                scores.join(";"),
                row.key,
                csv_field(row.error.as_deref().unwrap_or("")),
                csv_field(&row.retries.join("; "))
            );
        }
        out
    }
}

fn state_name(state: TrialState) -> &'static str {
    match state {
        TrialState::Running => "running",
        TrialState::Waiting => "waiting",
        TrialState::Completed => "completed",
        TrialState::Pruned => "pruned",
        TrialState::Failed => "failed",
    }
}

/// Writes `trials.csv`, `trials.json`, `best_params.json` and the plots folder.
pub fn write_outputs(
    table: &TrialsTable,
    space: &SearchSpace,
    csv: &Path,
    json: &Path,
    best_params: &Path,
    plots: &Path,
) -> Result<()> {
    std::fs::write(csv, table.csv(space)).map_err(|e| Error::io(csv, e))?;
    let text = serde_json::to_string_pretty(table)
        .map_err(|e| Error::invalid_data(json, e.to_string()))?;
    std::fs::write(json, text + "\n").map_err(|e| Error::io(json, e))?;
    let text = serde_json::to_string_pretty(&table.best_params)
        .map_err(|e| Error::invalid_data(best_params, e.to_string()))?;
    std::fs::write(best_params, text + "\n").map_err(|e| Error::io(best_params, e))?;
    std::fs::create_dir_all(plots).map_err(|e| Error::io(plots, e))?;
    let by_state = |x: &dyn Fn(&TrialRow) -> Option<f64>| -> Vec<Series> {
        [TrialState::Completed, TrialState::Pruned]
            .into_iter()
            .map(|state| Series {
                name: state_name(state).into(),
                points: table
                    .trials
                    .iter()
                    .filter(|r| r.state == state)
                    .filter_map(|r| Some((x(r)?, r.best_score?)))
                    .collect(),
                scatter: true,
            })
            .collect()
    };
    let chart = Chart {
        title: "best validation score per trial".into(),
        x_label: "trial".into(),
        y_label: "score".into(),
        log_x: false,
        series: by_state(&|r| Some(r.trial as f64)),
    };
    crate::plot::save(&plots.join("trials.png"), &chart, 720, 440)?;
    for (path, dist) in space {
        if matches!(dist, Distribution::Choice(values) if !values.iter().all(Value::is_number)) {
            continue;
        }
        let chart = Chart {
            title: format!("best validation score against {path}"),
            x_label: path.clone(),
            y_label: "score".into(),
            log_x: matches!(dist, Distribution::LogUniform(..)),
            series: by_state(&|r| r.params.get(path).and_then(Value::as_f64)),
        };
        crate::plot::save(&plots.join(format!("{path}.png")), &chart, 720, 440)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_has_a_column_per_param_and_writes_every_output() {
        let space = SearchSpace::from([
            ("lr".into(), Distribution::LogUniform(1e-4, 1e-2)),
            (
                "model.encoder".into(),
                Distribution::Choice(vec![json!("plain"), json!("efficientnet-b0")]),
            ),
        ]);
        let row = |trial, state, lr: f64, scores: Vec<f64>, retries: Vec<String>| TrialRow {
            trial,
            state,
            params: Sample::from([
                ("lr".into(), json!(lr)),
                ("model.encoder".into(), json!("plain")),
            ]),
            epochs: scores.len(),
            best_epoch: Some(1),
            best_score: scores.iter().copied().reduce(f64::max),
            scores,
            seconds: 1.5,
            segments: 1,
            key: "abc".into(),
            error: None,
            retries,
            ran_ms: Vec::new(),
        };
        let table = TrialsTable {
            rungs: vec![1, 3],
            best_trial: 0,
            best_score: 0.7,
            best_params: json!({"lr": 0.001}),
            trials: vec![
                row(0, TrialState::Completed, 0.001, vec![0.5, 0.6, 0.7], vec![]),
                row(
                    1,
                    TrialState::Pruned,
                    0.005,
                    vec![0.2],
                    vec!["NODE_FAIL".into(), "PREEMPTED, requeued".into()],
                ),
            ],
        };
        let csv = table.csv(&space);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "trial,state,lr,model.encoder,epochs,best_epoch,best_score,seconds,segments,scores,key,error,retries"
        );
        assert_eq!(
            lines[1],
            "0,completed,0.001,plain,3,1,0.700000,1.500,1,0.500000;0.600000;0.700000,abc,,"
        );
        assert!(lines[2].starts_with("1,pruned,0.005,plain,1,"));
        assert!(
            lines[2].ends_with(",abc,,\"NODE_FAIL; PREEMPTED, requeued\""),
            "{}",
            lines[2]
        );
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        write_outputs(
            &table,
            &space,
            &p("t.csv"),
            &p("t.json"),
            &p("best.json"),
            &p("plots"),
        )
        .unwrap();
        let back: TrialsTable =
            serde_json::from_str(&std::fs::read_to_string(p("t.json")).unwrap()).unwrap();
        assert_eq!(back, table);
        assert!(p("plots/trials.png").exists() && p("plots/lr.png").exists());
        assert!(
            !p("plots/model.encoder.png").exists(),
            "no chart against a non-numeric choice"
        );
    }
}
