//! Runs the selected stages and whatever upstream of them is stale. Independent stages run at the
//! same time within the job, CPU and GPU limits; each stage takes its key's lock, so two processes
//! never build the same entry twice: the second waits and reuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::build::{Built, Target, build};
use crate::config::{Pipeline, Stage};
use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::hash_memo::HashMemo;
use crate::kind::{EngineContext, StageFailure, StageJob, run_guarded};
use crate::plan::pipeline_id;
use crate::resolve::{self, Resolved};
use crate::runlog::{RunRecord, StageOutcome, StageRun};
use crate::store::{self, ArtifactStore, Entry};
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
    let gc_guard = store.lock_shared()?;
    let started = Instant::now();
    let started_unix_ms = store::now_unix_ms();
    let count = pipeline.stages.len();
    let mut is_forced = vec![false; count];
    for &i in &forced {
        is_forced[i] = true;
    }
    // Position of each stage of this run in graph order; the ready set is kept in that order so
    // stages start the way the file lists them.
    let mut position = vec![usize::MAX; count];
    for (p, &i) in stages.iter().enumerate() {
        position[i] = p;
    }
    let mut status: Vec<Status> = (0..count).map(|_| Status::Pending).collect();
    // Upstream stages not done yet; every upstream stage of a selected stage is in the run.
    let mut waiting: Vec<usize> = vec![0; count];
    let mut ready: BTreeSet<usize> = BTreeSet::new();
    for &i in &stages {
        waiting[i] = dag.upstream(i).len();
        if waiting[i] == 0 {
            ready.insert(position[i]);
        }
    }
    let mut runs: BTreeMap<usize, StageRun> = BTreeMap::new();
    let mut any_input_error = false;
    let (mut used_cpu, mut used_gpu, mut running) = (0u32, 0u32, 0usize);
    let (tx, rx) = mpsc::channel::<Finished>();

    std::thread::scope(|scope| {
        loop {
            let mut started_now = Vec::new();
            for &p in &ready {
                if running >= options.jobs.max(1) {
                    break;
                }
                let i = stages[p];
                let stage = &pipeline.stages[i];
                let need = stage.resources;
                let fits = used_gpu + need.gpu <= pipeline.limits.gpu
                    && (running == 0 || used_cpu + need.cpu <= pipeline.limits.cpu);
                if !fits {
                    continue;
                }
                let entries: BTreeMap<String, Entry> = dag
                    .upstream(i)
                    .into_iter()
                    .filter_map(|u| match &status[u] {
                        Status::Done(e) => Some((pipeline.stages[u].name.clone(), (**e).clone())),
                        _ => None,
                    })
                    .collect();
                status[i] = Status::Running;
                started_now.push(p);
                (used_cpu, used_gpu, running) =
                    (used_cpu + need.cpu, used_gpu + need.gpu, running + 1);
                let tx = tx.clone();
                let force = is_forced[i];
                scope.spawn(move || {
                    let finished = run_stage(pipeline, i, &entries, store, memo, force, ui);
                    let _ = tx.send(finished);
                });
            }
            for p in started_now {
                ready.remove(&p);
            }
            if running == 0 {
                break;
            }
            let Ok(done) = rx.recv() else { break };
            let i = done.stage;
            let need = pipeline.stages[i].resources;
            (used_cpu, used_gpu, running) = (used_cpu - need.cpu, used_gpu - need.gpu, running - 1);
            any_input_error |= done.input_error;
            runs.insert(i, done.run);
            match done.entry {
                Some(entry) => {
                    status[i] = Status::Done(Box::new(entry));
                    for d in dag.downstream(i) {
                        if position[d] == usize::MAX {
                            continue;
                        }
                        waiting[d] -= 1;
                        if waiting[d] == 0 && matches!(status[d], Status::Pending) {
                            ready.insert(position[d]);
                        }
                    }
                }
                None => {
                    status[i] = Status::Failed;
                    // Stages behind a failure cannot run.
                    let mut behind = dag.downstream(i);
                    while let Some(d) = behind.pop() {
                        if position[d] == usize::MAX || !matches!(status[d], Status::Pending) {
                            continue;
                        }
                        status[d] = Status::Blocked;
                        ready.remove(&position[d]);
                        let stage = &pipeline.stages[d];
                        warn!(stage = %stage.name, "blocked: an upstream stage failed");
                        runs.insert(
                            d,
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
                        behind.extend(dag.downstream(d));
                    }
                }
            }
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
        hashing: memo.stats(),
    };
    record.save(&store.runs_dir())?;
    // Results replaced by `--force` go once no other process can be reading them (the record
    // above is saved first, so gc never sees this run's entries unreferenced).
    drop(gc_guard);
    if let Err(e) = store.sweep_replaced() {
        warn!("cannot remove replaced results: {e}");
    }
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
    let progress = ui.stage_progress(&stage.name);
    let pipeline_name = pipeline_id(pipeline);
    let outputs = stage.kind.spec().output_files();
    let target = Target {
        parts: &resolved.parts,
        sources: &resolved.sources,
        stage: &stage.name,
        pipeline: &pipeline_name,
        outputs: &outputs,
    };
    let on_wait = || info!(stage = %stage.name, key = %key.short(), "waiting: another covseg process is building this result");
    let started = Instant::now();
    let built = build(store, &target, force, on_wait, |out_dir, work_dir| {
        info!(stage = %stage.name, key = %key.short(), "running");
        let engine = EngineContext {
            store,
            parts: &resolved.parts,
            stage: &stage.name,
            pipeline: pipeline_name.clone(),
            threads: stage.resources.cpu as usize,
            gpus: stage.resources.gpu,
        };
        let job = StageJob {
            inputs: resolved.inputs.clone(),
            params: &resolved.parts.params,
            seed: pipeline.seed,
            out_dir,
            work_dir,
            progress: &progress,
            engine: Some(&engine),
        };
        let outcome = run_guarded(stage.resources.cpu as usize, || stage.kind.run(&job));
        progress.finish();
        outcome.map(|()| true)
    });
    progress.finish();
    match built? {
        Built::Hit(entry) => {
            info!(stage = %stage.name, key = %key.short(), "cached");
            Ok((entry, StageOutcome::Hit))
        }
        Built::Ran(entry) => {
            let seconds = started.elapsed().as_secs_f64();
            info!(stage = %stage.name, key = %key.short(), seconds = format!("{seconds:.2}"), "done");
            Ok((entry, StageOutcome::Ran))
        }
        Built::Unfinished => Err(StageFailure::internal(
            "the stage ended without completing its result",
        )),
    }
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
