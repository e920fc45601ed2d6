//! A pipeline stage as a Slurm job: the run submits `covseg stage NAME --pipeline FILE --key K`,
//! which builds the entry in the shared cache on a compute node, waits for the job, and then finds
//! the entry like any other. The job's id is kept beside the cache (`jobs/<key>.json`), so a run
//! that was killed and started again waits for the job still running instead of sending another.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::cache::runlog::StageOutcome;
use crate::cache::store::{ArtifactStore, Entry};
use crate::pipeline::config::{Pipeline, Stage};
use crate::pipeline::executor::{JobResources, SlurmConfig};
use crate::pipeline::kind::StageFailure;
use crate::pipeline::resolve::Resolved;
use crate::slurm::job::{JobId, JobStatus, Phase};
use crate::slurm::{cancel, client};

/// The cluster settings of a stage that runs as a job under this pipeline's executor.
pub fn job_of<'a>(
    pipeline: &'a Pipeline,
    stage: &Stage,
) -> Option<(&'a SlurmConfig, JobResources)> {
    let cluster = pipeline.executor.slurm()?;
    let kind = stage.kind.spec().name;
    cluster.runs_as_job(kind).then(|| {
        let job = cluster.stage_job(kind, &stage.job, stage.resources.cpu, stage.resources.gpu);
        (cluster, job)
    })
}

/// Where a stage's work goes, for `plan` and `explain`; `None` under the local executor.
pub fn describe(pipeline: &Pipeline, stage: &Stage) -> Option<String> {
    let cluster = pipeline.executor.slurm()?;
    if let Some((_, job)) = job_of(pipeline, stage) {
        return Some(format!("slurm job: {}", job.describe()));
    }
    if stage.kind.spec().name == "tune" {
        let job = cluster.trial_job(&stage.job, 0);
        return Some(format!(
            "here, its trials as slurm jobs: {}",
            job.describe()
        ));
    }
    Some("here (not a job kind)".into())
}

/// `jobs/<key>.json`: the job building a key.
#[derive(Serialize, Deserialize)]
struct JobRecord {
    job: JobId,
    stage: String,
    submitted_unix_ms: u64,
}

fn jobs_dir(store: &ArtifactStore) -> PathBuf {
    store.root().join("jobs")
}

fn failure(message: String) -> StageFailure {
    StageFailure::internal(message)
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the stage as a job and returns its entry.
pub fn run_as_job(
    pipeline: &Pipeline,
    stage: &Stage,
    resolved: &Resolved,
    store: &ArtifactStore,
    force: bool,
) -> Result<(Entry, StageOutcome), StageFailure> {
    let key = resolved.key;
    if !force && let Some(entry) = store.lookup(&key)? {
        return Ok((entry, StageOutcome::Hit));
    }
    let (cluster, resources) =
        job_of(pipeline, stage).ok_or_else(|| failure("not a job stage".into()))?;
    let dir = jobs_dir(store);
    std::fs::create_dir_all(&dir).map_err(|e| failure(format!("{}: {e}", dir.display())))?;
    let record_path = dir.join(format!("{}.json", key.hex()));
    let log_pattern = dir.join(format!("{}.%j.log", stage.name));
    let started = Instant::now();

    // A job an earlier run sent for this key and that is still going: wait for it.
    let earlier = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok());
    let mut adopted = None;
    if let Some(record) = earlier
        && !force
        && let Ok(known) = client::status(&[record.job.job])
        && known
            .get(&record.job)
            .is_some_and(|s| s.phase() == Phase::Active)
    {
        info!(stage = %stage.name, "adopting slurm job {} from an earlier run", record.job);
        adopted = Some(record.job);
    }
    let id = match adopted {
        Some(id) => id,
        None => {
            client::check()?;
            let program = std::env::current_exe()
                .map_err(|e| failure(format!("cannot find covseg's own executable: {e}")))?;
            let pipeline_file =
                std::path::absolute(&pipeline.path).unwrap_or(pipeline.path.clone());
            let mut line: Vec<OsString> = vec![
                program.into_os_string(),
                "stage".into(),
                stage.name.clone().into(),
                "--pipeline".into(),
                pipeline_file.into_os_string(),
                "--key".into(),
                key.hex().into(),
                "--threads".into(),
                resources.cpus.to_string().into(),
            ];
            if force {
                line.push("--force".into());
            }
            let submitted = client::submit(&client::Submission {
                name: format!("covseg-{}", stage.name),
                tasks: vec![(None, line)],
                output: log_pattern.clone(),
                script: dir.join(format!("{}.{}.sh", stage.name, std::process::id())),
                chdir: &std::env::current_dir()
                    .map_err(|e| failure(format!("the working folder: {e}")))?,
                resources: &resources,
            })?;
            let id = submitted.ids[0];
            let record = JobRecord {
                job: id,
                stage: stage.name.clone(),
                submitted_unix_ms: crate::cache::store::now_unix_ms() as u64,
            };
            let bytes = serde_json::to_vec(&record).map_err(|e| failure(e.to_string()))?;
            crate::cache::atomic::write(&record_path, &bytes)?;
            info!(stage = %stage.name, key = %key.short(), "slurm job {id} submitted ({})", resources.describe());
            id
        }
    };
    cancel::track(&[id]);
    let log = PathBuf::from(
        log_pattern
            .to_string_lossy()
            .replace("%j", &id.job.to_string()),
    );
    let ended = watch(stage, id, cluster, started);
    cancel::untrack(&[id]);
    let _ = std::fs::remove_file(&record_path);
    let status = ended?;
    // After a job that completed, its entry may take a moment to be visible on a shared
    // filesystem (NFS caches lookups).
    let completed = status
        .as_ref()
        .is_some_and(|s| s.phase() == Phase::Completed);
    let deadline = Instant::now()
        + if completed {
            client::SETTLE
        } else {
            std::time::Duration::ZERO
        };
    loop {
        if let Some(entry) = store.lookup(&key)? {
            return Ok((entry, StageOutcome::Ran));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let what = match &status {
        Some(s) if s.phase() == Phase::Completed => "ended without its result".to_owned(),
        Some(s) => s.explain(),
        None => "is no longer known to the controller".to_owned(),
    };
    let last = tail(&log, 6);
    // `covseg stage` exits 2 on bad input: the same input error as a local run.
    let input_error = status
        .as_ref()
        .is_some_and(|s| s.exit_code.starts_with("2:"));
    Err(StageFailure {
        message: format!(
            "slurm job {id} {what} (log: {}){}",
            log.display(),
            if last.is_empty() {
                String::new()
            } else {
                format!("\n{last}")
            }
        ),
        input_error,
    })
}

/// Polls until the job ends; its last status (`None`: forgotten by the controller).
fn watch(
    stage: &Stage,
    id: JobId,
    cluster: &SlurmConfig,
    started: Instant,
) -> Result<Option<JobStatus>, StageFailure> {
    let mut seen = String::new();
    let mut missing_since: Option<Instant> = None;
    let mut unreachable: Option<Instant> = None;
    loop {
        let answer = client::status(&[id.job]);
        if answer.is_ok() {
            unreachable = None;
        }
        match answer {
            Err(e) => {
                let since = *unreachable.get_or_insert_with(Instant::now);
                if since.elapsed() >= client::UNREACHABLE {
                    let _ = client::cancel(&[id]);
                    return Err(failure(format!(
                        "the Slurm controller has not answered for {} minutes ({e}); slurm job {id} was given up",
                        client::UNREACHABLE.as_secs() / 60
                    )));
                }
                warn!(stage = %stage.name, "cannot read the Slurm queue, trying again: {e}");
            }
            Ok(known) => match known.get(&id) {
                None => {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    if since.elapsed().as_secs() >= 30 {
                        return Ok(None);
                    }
                }
                Some(status) => {
                    missing_since = None;
                    let now = if status.reason.is_empty() || status.reason == "None" {
                        status.state.clone()
                    } else {
                        format!("{} ({})", status.state, status.reason)
                    };
                    if now != seen {
                        info!(stage = %stage.name, "slurm job {id} {now} after {:.0}s", started.elapsed().as_secs_f64());
                        seen = now;
                    }
                    match status.phase() {
                        Phase::Active => {}
                        Phase::Impossible => {
                            let _ = client::cancel(&[id]);
                            return Err(StageFailure {
                                message: format!(
                                    "slurm job {id} can never start: pending with reason {}; check [executor] and the stage's resources against `sinfo`",
                                    status.reason
                                ),
                                input_error: true,
                            });
                        }
                        _ => return Ok(Some(status.clone())),
                    }
                }
            },
        }
        std::thread::sleep(cluster.poll_interval);
    }
}
