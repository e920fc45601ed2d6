//! One record per `covseg run`: which stages ran or were reused, with their keys and timings.
//! Written last, atomically; `explain` reads the newest record naming a stage to say what changed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::atomic;
use crate::cache::digest::Digest;
use crate::cache::key::{InputSources, KeyParts};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageOutcome {
    /// Reused from the cache.
    Hit,
    /// Computed in this run.
    Ran,
    Failed,
    /// Not run because something upstream failed.
    Blocked,
}

impl StageOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "cached",
            Self::Ran => "ran",
            Self::Failed => "FAILED",
            Self::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    pub kind: String,
    pub outcome: StageOutcome,
    pub key: Option<Digest>,
    pub parts: Option<KeyParts>,
    #[serde(default)]
    pub sources: InputSources,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub covseg_version: String,
    pub started_unix_ms: u128,
    pub seconds: f64,
    pub success: bool,
    pub stages: Vec<StageRun>,
    /// External inputs taken from the hash memo and read afresh.
    #[serde(default)]
    pub hashing: crate::cache::hash_memo::HashStats,
}

impl RunRecord {
    pub fn save(&self, runs_dir: &Path) -> Result<PathBuf> {
        let path = runs_dir.join(format!("{}.json", self.id));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        atomic::write(&path, &bytes)?;
        Ok(path)
    }
}

/// All readable run records, newest first. Unreadable ones are skipped: they only feed `explain`
/// and `gc`, and gc keeps entries it cannot prove unreferenced only through records it can read.
pub fn load_all(runs_dir: &Path) -> Vec<(PathBuf, RunRecord)> {
    let mut runs: Vec<(PathBuf, RunRecord)> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            Some((
                p.clone(),
                serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?,
            ))
        })
        .collect();
    runs.sort_by(|a, b| (b.1.started_unix_ms, &b.1.id).cmp(&(a.1.started_unix_ms, &a.1.id)));
    runs
}

/// For every stage of `pipeline`, its newest run that computed a key: one pass over the records,
/// so a plan of many stale stages stays linear.
pub fn last_runs<'a>(
    runs: &'a [(PathBuf, RunRecord)],
    pipeline: &str,
) -> std::collections::HashMap<&'a str, &'a StageRun> {
    let mut out = std::collections::HashMap::new();
    for (_, record) in runs.iter().filter(|(_, r)| r.pipeline == pipeline) {
        for stage in record.stages.iter().filter(|s| s.parts.is_some()) {
            out.entry(stage.name.as_str()).or_insert(stage);
        }
    }
    out
}

/// The newest run of `pipeline` that computed a key for `stage`.
pub fn last_run_of(
    runs: &[(PathBuf, RunRecord)],
    pipeline: &str,
    stage: &str,
) -> Option<(RunRecord, StageRun)> {
    runs.iter()
        .filter(|(_, r)| r.pipeline == pipeline)
        .find_map(|(_, r)| {
            r.stages
                .iter()
                .find(|s| s.name == stage && s.parts.is_some())
                .map(|s| (r.clone(), s.clone()))
        })
}
