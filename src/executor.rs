//! Runs the selected stages and whatever upstream of them is stale. Independent stages run at the
//! same time within the job, CPU and GPU limits; each stage takes its key's lock, so two processes
//! never build the same entry twice: the second waits and reuses.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::config::{Pipeline, Stage};
use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::hash_memo::HashMemo;
use crate::kind::{EngineContext, StageFailure, StageJob, run_guarded};
use crate::plan::pipeline_id;
use crate::resolve::{self, Resolved};
use crate::runlog::{RunRecord, StageOutcome, StageRun};
use crate::store::{self, ArtifactStore, Entry, EntryRecord};
use crate::ui::Ui;

pub struct RunOptions {
    /// Stages named with `--stage`; empty means all.
    pub selected: Vec<usize>,
    /// Rerun the selected stages (all when none is selected) even when cached.
    pub force: bool,
    /// Most stages running at once.
    pub jobs: usize,
}

enum Status {
    Pending,
    Running,
    Done(Box<Entry>),
    Failed,
    Blocked,
}

struct Finished {
    stage: usize,
    run: StageRun,
    entry: Option<Entry>,
    input_error: bool,
}

pub fn run(
    pipeline: &Pipeline,
    dag: &Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
    options: &RunOptions,
    ui: &Ui,
) -> Result<RunRecord> {
    let stages = if options.selected.is_empty() {
        dag.order().to_vec()
    } else {
        dag.with_ancestors(&options.selected)
    };
    resolve::check_external(pipeline, &stages)?;
    let forced: Vec<usize> = if !options.force {
        Vec::new()
    } else if options.selected.is_empty() {
        stages.clone()
    } else {
        options.selected.clone()
    };
    let _gc_guard = store.lock_shared()?;
    let started = Instant::now();
    let started_unix_ms = store::now_unix_ms();
    let mut status: BTreeMap<usize, Status> =
        stages.iter().map(|&i| (i, Status::Pending)).collect();
    let mut runs: BTreeMap<usize, StageRun> = BTreeMap::new();
    let mut any_input_error = false;
    let (mut used_cpu, mut used_gpu, mut running) = (0u32, 0u32, 0usize);
    let (tx, rx) = mpsc::channel::<Finished>();

    std::thread::scope(|scope| {
        loop {
            // Stages behind a failure cannot run.
            for &i in &stages {
                if matches!(status[&i], Status::Pending)
                    && dag
                        .upstream(i)
                        .iter()
                        .any(|u| matches!(status.get(u), Some(Status::Failed | Status::Blocked)))
                {
                    status.insert(i, Status::Blocked);
                    let stage = &pipeline.stages[i];
                    warn!(stage = %stage.name, "blocked: an upstream stage failed");
                    runs.insert(
                        i,
                        StageRun {
                            name: stage.name.clone(),
                            kind: stage.kind.spec().name.into(),
                            outcome: StageOutcome::Blocked,
                            key: None,
                            parts: None,
                            sources: Default::default(),
                            seconds: 0.0,
                            error: None,
                        },
                    );
                }
            }
            for &i in &stages {
                if !matches!(status[&i], Status::Pending) {
                    continue;
                }
                let upstream = dag.upstream(i);
                if !upstream
                    .iter()
                    .all(|u| matches!(status.get(u), Some(Status::Done(_))))
                {
                    continue;
                }
                let stage = &pipeline.stages[i];
                let need = stage.resources;
                let fits = running < options.jobs.max(1)
                    && used_gpu + need.gpu <= pipeline.limits.gpu
                    && (running == 0 || used_cpu + need.cpu <= pipeline.limits.cpu);
                if !fits {
                    continue;
                }
                let entries: BTreeMap<String, Entry> = upstream
                    .iter()
                    .filter_map(|u| match &status[u] {
                        Status::Done(e) => Some((pipeline.stages[*u].name.clone(), (**e).clone())),
                        _ => None,
                    })
                    .collect();
                status.insert(i, Status::Running);
                (used_cpu, used_gpu, running) =
                    (used_cpu + need.cpu, used_gpu + need.gpu, running + 1);
                let tx = tx.clone();
                let force = forced.contains(&i);
                scope.spawn(move || {
                    let finished = run_stage(pipeline, i, &entries, store, memo, force, ui);
                    let _ = tx.send(finished);
                });
            }
            if running == 0 {
                break;
            }
            let Ok(done) = rx.recv() else { break };
            let need = pipeline.stages[done.stage].resources;
            (used_cpu, used_gpu, running) = (used_cpu - need.cpu, used_gpu - need.gpu, running - 1);
            any_input_error |= done.input_error;
            status.insert(
                done.stage,
                match done.entry {
                    Some(entry) => Status::Done(Box::new(entry)),
                    None => Status::Failed,
                },
            );
            runs.insert(done.stage, done.run);
        }
    });

    memo.save()?;
    let record = RunRecord {
        id: format!("{started_unix_ms}-{}", std::process::id()),
        pipeline: pipeline_id(pipeline),
        covseg_version: crate::key::COVSEG_VERSION.to_owned(),
        started_unix_ms,
        seconds: started.elapsed().as_secs_f64(),
        success: runs
            .values()
            .all(|r| matches!(r.outcome, StageOutcome::Hit | StageOutcome::Ran)),
        stages: stages.iter().filter_map(|i| runs.remove(i)).collect(),
    };
    record.save(&store.runs_dir())?;
    if record.success {
        return Ok(record);
    }
    let failures = record
        .stages
        .iter()
        .filter(|s| s.outcome == StageOutcome::Failed)
        .map(|s| (s.name.clone(), s.error.clone().unwrap_or_default()))
        .collect();
    Err(Error::StagesFailed {
        failures,
        input_error: any_input_error,
    })
}

fn run_stage(
    pipeline: &Pipeline,
    i: usize,
    upstream: &BTreeMap<String, Entry>,
    store: &ArtifactStore,
    memo: &HashMemo,
    force: bool,
    ui: &Ui,
) -> Finished {
    let stage = &pipeline.stages[i];
    let started = Instant::now();
    let mut run = StageRun {
        name: stage.name.clone(),
        kind: stage.kind.spec().name.into(),
        outcome: StageOutcome::Failed,
        key: None,
        parts: None,
        sources: Default::default(),
        seconds: 0.0,
        error: None,
    };
    let result = resolve::resolve(pipeline, stage, upstream, memo)
        .map_err(StageFailure::from)
        .and_then(|resolved| {
            run.key = Some(resolved.key);
            run.parts = Some(resolved.parts.clone());
            run.sources = resolved.sources.clone();
            execute(pipeline, stage, &resolved, store, force, ui)
        });
    run.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok((entry, outcome)) => {
            run.outcome = outcome;
            Finished {
                stage: i,
                run,
                entry: Some(entry),
                input_error: false,
            }
        }
        Err(failure) => {
            error!(stage = %stage.name, "failed: {}", failure.message);
            run.error = Some(failure.message);
            Finished {
                stage: i,
                run,
                entry: None,
                input_error: failure.input_error,
            }
        }
    }
}

impl From<Error> for StageFailure {
    fn from(e: Error) -> Self {
        Self {
            input_error: e.exit_code() == 2,
            message: e.to_string(),
        }
    }
}

fn execute(
    pipeline: &Pipeline,
    stage: &Stage,
    resolved: &Resolved,
    store: &ArtifactStore,
    force: bool,
    ui: &Ui,
) -> Result<(Entry, StageOutcome), StageFailure> {
    let key = resolved.key;
    let lock = store.lock_key(&key, || info!(stage = %stage.name, key = %key.short(), "waiting: another covseg process is building this result"))?;
    if !force && let Some(entry) = store.lookup(&key)? {
        info!(stage = %stage.name, key = %key.short(), "cached");
        return Ok((entry, StageOutcome::Hit));
    }
    info!(stage = %stage.name, key = %key.short(), "running");
    let staging = store.stage(&key, &lock)?;
    let out_dir = staging.out_dir();
    let work_dir = store.work_dir(&key, &lock)?;
    let progress = ui.stage_progress(&stage.name);
    let engine = EngineContext {
        store,
        parts: &resolved.parts,
        stage: &stage.name,
        pipeline: pipeline_id(pipeline),
        threads: stage.resources.cpu as usize,
        gpus: stage.resources.gpu,
    };
    let job = StageJob {
        inputs: resolved.inputs.clone(),
        params: &resolved.parts.params,
        seed: pipeline.seed,
        out_dir: &out_dir,
        work_dir: &work_dir,
        progress: &progress,
        engine: Some(&engine),
    };
    let started = Instant::now();
    let outcome = run_guarded(stage.resources.cpu as usize, || stage.kind.run(&job));
    progress.finish();
    outcome?;
    let seconds = started.elapsed().as_secs_f64();
    let outputs = stage.kind.spec().output_files();
    let record = EntryRecord {
        key,
        stage: stage.name.clone(),
        pipeline: pipeline_id(pipeline),
        parts: resolved.parts.clone(),
        sources: resolved.sources.clone(),
        outputs: BTreeMap::new(),
        created_unix_ms: store::now_unix_ms(),
        seconds,
    };
    let entry = store.publish(staging, &outputs, record)?;
    store.drop_work_dir(&key);
    info!(stage = %stage.name, key = %key.short(), seconds = format!("{seconds:.2}"), "done");
    drop(lock);
    Ok((entry, StageOutcome::Ran))
}

/// The table printed after a run.
pub fn summary(record: &RunRecord) -> String {
    use std::fmt::Write;
    let width = record
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = String::new();
    for s in &record.stages {
        let key = s.key.map(|k| k.short()).unwrap_or_default();
        let time = if s.outcome == StageOutcome::Ran || s.outcome == StageOutcome::Failed {
            format!("{:.2}s", s.seconds)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:width$}  {:7}  {key:12}  {time}",
            s.name,
            s.outcome.label()
        );
    }
    let ran = record
        .stages
        .iter()
        .filter(|s| s.outcome == StageOutcome::Ran)
        .count();
    let hits = record
        .stages
        .iter()
        .filter(|s| s.outcome == StageOutcome::Hit)
        .count();
    let _ = writeln!(
        out,
        "{} stage(s): {ran} ran, {hits} cached, {} failed, {} blocked in {:.2}s",
        record.stages.len(),
        record
            .stages
            .iter()
            .filter(|s| s.outcome == StageOutcome::Failed)
            .count(),
        record
            .stages
            .iter()
            .filter(|s| s.outcome == StageOutcome::Blocked)
            .count(),
        record.seconds
    );
    out
}
