//! The tune stage's engine side: trials as cached runs of a tunable kind, driven by the domain's
//! [`Study`] (sampler and ASHA), launched as `covseg trial` processes, and recorded by this
//! process alone in an append-only journal in the stage's work folder. A killed tune resumes from
//! the journal: finished segments are not run again, the ones that were running are, and they go
//! on from their checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use tracing::{info, warn};

use covseg_stages::tune::{
    Job, Study, StudySettings, TrialRow, TrialState, TrialsTable, TuneConfig,
};

use crate::cache::journal::Journal;
use crate::pipeline::kind::{EngineContext, StageFailure, StageJob, StageKind};
use crate::tuning::journal::{Event, History, now_ms, replay};
use crate::tuning::params::{describe, trial_params};
use crate::tuning::slurm::SlurmLauncher;
use crate::tuning::trial::{LocalLauncher, TrialCommand, TrialLauncher, TrialReport, TrialSpec};

/// Where the tune stage writes.
pub struct TuneOutputs {
    pub csv: PathBuf,
    pub json: PathBuf,
    pub best_params: PathBuf,
    pub plots: PathBuf,
}

/// Runs the search and writes its outputs. `kind` is the tuned kind (train).
pub fn run(
    job: &StageJob<'_>,
    kind: &'static dyn StageKind,
    config: &TuneConfig,
    outputs: &TuneOutputs,
) -> Result<(), StageFailure> {
    let engine = job.engine.ok_or_else(|| StageFailure {
        message: "tune runs its trials through the cache: run it in a pipeline (`covseg run`), not with `covseg exec`".into(),
        input_error: true,
    })?;
    let max_epochs = config.train["epochs"].as_u64().unwrap_or(1) as usize;
    let mut study = Study::new(
        StudySettings {
            sampler: config.sampler,
            startup_trials: config.startup_trials,
            trials: config.trials,
            pruner: config.pruner.clone(),
            max_epochs,
            seed: job.seed,
        },
        config.space.clone(),
    );
    let trials_dir = job.work_dir.join("trials");
    std::fs::create_dir_all(&trials_dir)
        .map_err(|e| StageFailure::internal(format!("{}: {e}", trials_dir.display())))?;
    let (mut journal, events) =
        Journal::open::<Event>(&job.work_dir.join("journal.jsonl")).map_err(StageFailure::from)?;
    let mut keys: BTreeMap<usize, String> = BTreeMap::new();
    let mut ran_ms: BTreeMap<usize, Vec<[u64; 2]>> = BTreeMap::new();
    let mut history = History::default();
    let earlier_ms = replay(&mut study, &mut keys, &mut ran_ms, &mut history, &events);
    if !events.is_empty() {
        let done = study.trials().iter().filter(|t| t.segments > 0).count();
        info!(
            "resuming the search from {}: {} trial(s) recorded, {done} with results",
            journal.path().display(),
            study.trials().len()
        );
    }
    journal
        .append(&Event::Session { at_ms: now_ms() })
        .map_err(StageFailure::from)?;
    let started = Instant::now();
    let budget_ms = (config.max_minutes * 60_000.0) as u64;
    let within_budget =
        || budget_ms == 0 || earlier_ms + started.elapsed().as_millis() as u64 <= budget_ms;

    let slurm = engine.executor.slurm();
    let (parallel, threads) = match slurm {
        // Each trial is a job with its own CPUs: `parallel` is the jobs in flight.
        Some(cluster) => (
            config.parallel.max(1),
            cluster.trial_job(engine.job, 0).cpus as usize,
        ),
        None => {
            let parallel = parallel_trials(config, engine, kind);
            (parallel, (engine.threads / parallel).max(1))
        }
    };
    // The bar counts epochs, not trials: trials differ in length by a factor of the reduction
    // factor per rung, so an ETA from trials done jumps.
    let eta = config.pruner.reduction_factor.max(2);
    let mut total_epochs = expected_epochs(config.trials, study.rungs(), eta);
    job.progress.start(total_epochs, "epochs");
    let mut done_epochs = epochs_done(&study);
    job.progress.advance(done_epochs);

    let mut launcher: Box<dyn TrialLauncher> = match slurm {
        Some(cluster) => Box::new(
            SlurmLauncher::new(
                cluster.trial_job(engine.job, 0),
                cluster.poll_interval,
                engine.stage,
            )
            .map_err(StageFailure::from)?,
        ),
        None => Box::new(LocalLauncher::default()),
    };
    let retries = slurm.map_or(0, |c| c.retries as usize);
    let command_for = |trial: usize, until: usize| {
        TrialCommand::new(
            trial,
            until,
            &spec_path(&trials_dir, trial),
            threads,
            trials_dir.join(format!("{trial}.report.json")),
            trials_dir.join(format!("{trial}.log")),
        )
        .map_err(StageFailure::from)
    };
    let mut pending: Vec<Job> = Vec::new();
    let mut running = 0usize;
    // Segments an earlier run left with the scheduler: taken over, not run a second time.
    for job in study.in_flight() {
        let adopted = match history.submitted.get(&(job.trial, job.until)) {
            Some(id) => launcher
                .adopt(command_for(job.trial, job.until)?, id)
                .map_err(StageFailure::from)?,
            None => false,
        };
        if adopted {
            running += 1;
        } else {
            pending.push(job);
        }
    }
    pending.reverse();
    let mut first_failure: Option<String> = None;
    loop {
        while running < parallel {
            let next = if let Some(job) = pending.pop() {
                Some(job)
            } else if !within_budget() {
                None
            } else if let Some(job) = study.next_promotion() {
                Some(job)
            } else if study.can_start_new() {
                let sample = study.propose();
                let n = study.add(sample.clone());
                let params = trial_params(kind, &config.train, &sample)
                    .map_err(|m| StageFailure::internal(format!("trial {n}: {m}")))?;
                let spec = trial_spec(job, engine, kind, n, params);
                let key = spec.parts.key().hex();
                write_spec(&trials_dir, n, &spec)?;
                keys.insert(n, key.clone());
                journal
                    .append(&Event::Trial {
                        trial: n,
                        params: sample,
                        key,
                        at_ms: now_ms(),
                    })
                    .map_err(StageFailure::from)?;
                Some(study.first_job(n))
            } else {
                None
            };
            let Some(next) = next else { break };
            journal
                .append(&Event::Start {
                    trial: next.trial,
                    until: next.until,
                    at_ms: now_ms(),
                })
                .map_err(StageFailure::from)?;
            study.started(next);
            let command = command_for(next.trial, next.until)?;
            launcher.launch(command).map_err(StageFailure::from)?;
            running += 1;
            info!(
                "trial {}: segment to epoch {} started ({running} running)",
                next.trial, next.until
            );
        }
        for sent in launcher.flush().map_err(StageFailure::from)? {
            history
                .submitted
                .insert((sent.trial, sent.until), sent.job.clone());
            journal
                .append(&Event::Submitted {
                    trial: sent.trial,
                    until: sent.until,
                    job: sent.job,
                    at_ms: now_ms(),
                })
                .map_err(StageFailure::from)?;
        }
        let Some((command, result)) = launcher.wait() else {
            break;
        };
        running -= 1;
        let n = command.trial;
        if let Err(lost) = &result
            && lost.retriable
        {
            let used = history.retries_of(n, command.until);
            if used < retries {
                warn!(
                    "trial {n}: {}; running the segment again (retry {} of {retries})",
                    lost.message,
                    used + 1
                );
                journal
                    .append(&Event::Retried {
                        trial: n,
                        until: command.until,
                        reason: lost.message.clone(),
                        at_ms: now_ms(),
                    })
                    .map_err(StageFailure::from)?;
                history.retry(n, command.until, lost.message.clone());
                launcher.launch(command).map_err(StageFailure::from)?;
                running += 1;
                continue;
            }
        }
        let outcome = result
            .map_err(|f| f.message)
            .and_then(|report: TrialReport| match report.error {
                Some(message) => Err(message),
                None => Ok(report),
            });
        match outcome {
            Ok(report) => {
                let best = report
                    .scores
                    .iter()
                    .copied()
                    .filter(|s| s.is_finite())
                    .reduce(f64::max);
                info!(
                    "trial {n} ({}): {} epoch(s), best score {}{}",
                    study
                        .trial(n)
                        .map(|t| describe(&t.sample))
                        .unwrap_or_default(),
                    report.scores.len(),
                    best.map_or("-".into(), |b| format!("{b:.4}")),
                    if report.cached {
                        " (cached)"
                    } else if report.complete {
                        " (complete)"
                    } else {
                        ""
                    }
                );
                let ran = [report.started_unix_ms, report.ended_unix_ms];
                ran_ms.entry(n).or_default().push(ran);
                journal
                    .append(&Event::Result {
                        trial: n,
                        until: command.until,
                        scores: report.scores.clone(),
                        complete: report.complete,
                        cached: report.cached,
                        seconds: report.seconds,
                        at_ms: now_ms(),
                        ran_ms: Some(ran),
                    })
                    .map_err(StageFailure::from)?;
                study.finished(n, report.scores, report.complete, report.seconds);
            }
            Err(message) => {
                warn!(
                    "trial {n} failed: {message} (log: {})",
                    command.log.display()
                );
                first_failure.get_or_insert_with(|| format!("trial {n}: {message}"));
                journal
                    .append(&Event::Failed {
                        trial: n,
                        until: command.until,
                        message: message.clone(),
                        seconds: 0.0,
                        at_ms: now_ms(),
                    })
                    .map_err(StageFailure::from)?;
                study.failed(n, message, 0.0);
            }
        }
        let now_done = epochs_done(&study);
        if now_done > total_epochs {
            total_epochs = now_done;
            job.progress.set_total(total_epochs);
        }
        job.progress.advance(now_done.saturating_sub(done_epochs));
        done_epochs = now_done;
    }

    let Some(best) = study.best() else {
        return Err(StageFailure::internal(format!(
            "no trial produced a score; {}",
            first_failure.unwrap_or_else(|| "no trial ran".into())
        )));
    };
    let best_params = trial_params(kind, &config.train, &best.sample)
        .map_err(|m| StageFailure::internal(format!("best trial: {m}")))?;
    info!(
        "best trial {} ({}): score {:.4} at epoch {}",
        best.number,
        describe(&best.sample),
        best.best_score().unwrap_or(0.0),
        best.best_epoch().unwrap_or(0)
    );
    let table = TrialsTable {
        rungs: study.rungs().to_vec(),
        best_trial: best.number,
        best_score: best.best_score().unwrap_or(0.0),
        best_params,
        trials: study
            .trials()
            .iter()
            .map(|t| TrialRow {
                trial: t.number,
                state: study.state(t, true),
                params: t.sample.clone(),
                epochs: t.scores.len(),
                best_epoch: t.best_epoch(),
                best_score: t.best_score(),
                scores: t.scores.clone(),
                seconds: t.seconds,
                segments: t.segments,
                key: keys.get(&t.number).cloned().unwrap_or_default(),
                error: t.failure.clone(),
                ran_ms: ran_ms.get(&t.number).cloned().unwrap_or_default(),
                retries: history.reasons(t.number),
            })
            .collect(),
    };
    covseg_stages::tune::write_outputs(
        &table,
        &config.space,
        &outputs.csv,
        &outputs.json,
        &outputs.best_params,
        &outputs.plots,
    )?;
    // Checkpoints of trials that will not go on are not needed once the table is written.
    let stopped = table
        .trials
        .iter()
        .filter(|row| matches!(row.state, TrialState::Pruned | TrialState::Failed))
        .filter_map(|row| crate::cache::digest::Digest::from_hex(&row.key));
    drop_checkpoints(engine.store, stopped);
    Ok(())
}

/// Drops the work folders of these trial keys. A key another process holds (a search of its own
/// that reached the same params) is left alone: waiting for it could hang this stage behind a
/// long run. Returns how many were dropped.
fn drop_checkpoints(
    store: &crate::cache::store::ArtifactStore,
    keys: impl Iterator<Item = crate::cache::digest::Digest>,
) -> usize {
    let mut dropped = 0;
    for key in keys {
        if let Ok(Some(_lock)) = store.try_lock_key(&key) {
            store.drop_work_dir(&key);
            dropped += 1;
        }
    }
    dropped
}

/// Epochs a search of `trials` trials is expected to train: asynchronous successive halving lets
/// one trial in `eta` past each rung, so the epochs between rung `i − 1` and rung `i` are trained
/// by `eta^-i` of the trials.
fn expected_epochs(trials: usize, rungs: &[usize], eta: usize) -> u64 {
    let mut previous = 0;
    let mut per_trial = 0.0;
    for (i, &rung) in rungs.iter().enumerate() {
        per_trial += (rung - previous.min(rung)) as f64 / (eta as f64).powi(i as i32);
        previous = rung;
    }
    (per_trial * trials as f64).ceil().max(1.0) as u64
}

/// Epochs trained so far over every trial.
fn epochs_done(study: &Study) -> u64 {
    study.trials().iter().map(|t| t.scores.len() as u64).sum()
}

/// Trials at once: as asked, within the stage's CPU threads, and one per GPU for GPU training.
fn parallel_trials(config: &TuneConfig, engine: &EngineContext<'_>, kind: &dyn StageKind) -> usize {
    let mut n = config.parallel.min(engine.threads.max(1));
    // The class `auto` resolves to on this machine, so two trials never share one GPU.
    if kind
        .device_class(&config.train)
        .is_some_and(|class| class != "cpu")
    {
        n = n.min(engine.gpus.max(1) as usize);
    }
    if n < config.parallel {
        warn!(
            "running {n} trial(s) at once, not {}: the stage holds {} CPU thread(s) and {} GPU(s)",
            config.parallel, engine.threads, engine.gpus
        );
    }
    n.max(1)
}

fn trial_spec(
    job: &StageJob<'_>,
    engine: &EngineContext<'_>,
    kind: &dyn StageKind,
    trial: usize,
    params: Value,
) -> TrialSpec {
    let names: Vec<&str> = kind.spec().inputs.iter().map(|i| i.name).collect();
    let inputs = engine
        .parts
        .inputs
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .map(|(name, digest)| (name.clone(), *digest))
        .collect();
    let parts = crate::pipeline::kind::key_parts(kind, params, job.seed, inputs);
    TrialSpec {
        cache: absolute(engine.store.root()),
        stage: format!("{}/trial-{trial}", engine.stage),
        pipeline: engine.pipeline.clone(),
        sources: BTreeMap::new(),
        inputs: job
            .inputs
            .iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(name, path)| (name.clone(), absolute(path)))
            .collect(),
        parts,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn spec_path(dir: &Path, trial: usize) -> PathBuf {
    dir.join(format!("{trial}.json"))
}

fn write_spec(dir: &Path, trial: usize, spec: &TrialSpec) -> Result<(), StageFailure> {
    let bytes = serde_json::to_vec_pretty(spec)
        .map_err(|e| StageFailure::internal(format!("trial spec: {e}")))?;
    crate::cache::atomic::write(&spec_path(dir, trial), &bytes).map_err(StageFailure::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::digest::Digest;
    use crate::cache::store::ArtifactStore;
    use serde_json::json;

    #[test]
    fn cleanup_skips_a_key_another_process_holds_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), true).unwrap();
        let (free, held) = (Digest::of_bytes(b"free"), Digest::of_bytes(b"held"));
        for key in [free, held] {
            let lock = store.lock_key(&key, || {}).unwrap();
            store.work_dir(&key, &lock).unwrap();
        }
        // Another holder (its own open file, as another process would have).
        let _other = store.lock_key(&held, || {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_owned();
        std::thread::spawn(move || {
            let store = ArtifactStore::open(&root, false).unwrap();
            let _ = tx.send(drop_checkpoints(&store, [free, held].into_iter()));
        });
        let dropped = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the cleanup waited for a held key");
        assert_eq!(dropped, 1);
        assert!(!dir.path().join("work").join(free.hex()).exists());
        assert!(dir.path().join("work").join(held.hex()).exists());
    }

    /// A kind whose `auto` device resolves to a GPU, as train's does on a GPU machine.
    struct GpuTrain;

    impl StageKind for GpuTrain {
        fn spec(&self) -> &crate::pipeline::kind::KindSpec {
            crate::adapters::Train.spec()
        }
        fn params(&self, raw: &toml::Table) -> Result<Value, crate::pipeline::kind::ParamError> {
            crate::adapters::Train.params(raw)
        }
        fn run(&self, _job: &StageJob<'_>) -> Result<(), StageFailure> {
            Ok(())
        }
        fn device_class(&self, params: &Value) -> Option<&'static str> {
            match params["device"].as_str() {
                Some("cpu") => Some("cpu"),
                _ => Some("wgpu"),
            }
        }
    }

    #[test]
    fn the_search_length_counts_the_epochs_halving_lets_through() {
        // Rungs 4, 8, 16 with η = 2: 4 epochs for all, 4 more for half, 8 more for a quarter.
        assert_eq!(expected_epochs(4, &[4, 8, 16], 2), 32);
        assert_eq!(
            expected_epochs(3, &[10], 3),
            30,
            "no pruning: every epoch of every trial"
        );
    }

    #[test]
    fn parallel_trials_on_an_auto_gpu_get_one_gpu_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), true).unwrap();
        let parts = crate::pipeline::kind::key_parts(&GpuTrain, json!({}), 0, Default::default());
        let engine = EngineContext {
            store: &store,
            parts: &parts,
            stage: "tune",
            pipeline: "p".into(),
            threads: 8,
            gpus: 1,
            executor: &crate::pipeline::executor::Executor::Local,
            job: &Default::default(),
        };
        let config = |device: &str| TuneConfig {
            parallel: 4,
            train: json!({ "device": device }),
            ..TuneConfig::default()
        };
        assert_eq!(parallel_trials(&config("auto"), &engine, &GpuTrain), 1);
        assert_eq!(parallel_trials(&config("wgpu"), &engine, &GpuTrain), 1);
        assert_eq!(parallel_trials(&config("cpu"), &engine, &GpuTrain), 4);
    }
}
