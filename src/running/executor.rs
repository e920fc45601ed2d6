//! Runs the selected stages and whatever upstream of them is stale. Independent stages run at the
//! same time within the job, CPU and GPU limits; each stage takes its key's lock, so two processes
//! never build the same entry twice: the second waits and reuses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::cache::hash_memo::HashMemo;
use crate::cache::runlog::{RunRecord, StageOutcome, StageRun};
use crate::cache::store::{self, ArtifactStore, Entry};
use crate::error::{Error, Result};
use crate::pipeline::config::{Pipeline, Stage};
use crate::pipeline::dag::Dag;
use crate::pipeline::kind::{EngineContext, StageFailure, StageJob, run_guarded};
use crate::pipeline::resolve::{self, Resolved};
use crate::running::build::{Built, Target, build};
use crate::running::plan::pipeline_id;
use crate::running::ui::Ui;

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
    let stages = dag.selection(&options.selected);
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
    let mut state = Schedule::new(pipeline, dag, &stages, &forced);
    let mut any_input_error = false;
    let (mut used_cpu, mut used_gpu, mut running) = (0u32, 0u32, 0usize);
    let (tx, rx) = mpsc::channel::<Finished>();

    std::thread::scope(|scope| {
        loop {
            // Stages that became ready: a cached one is found here, without a thread or a
            // resource slot, so a no-op run of many stages costs one lookup per stage.
            while let Some(i) = state.newly_ready.pop() {
                if state.is_forced[i] {
                    state.queue(i);
                    continue;
                }
                match try_cached(pipeline, i, &state.upstream_entries(i), store, memo) {
                    Lookup::Done(done) => {
                        any_input_error |= done.input_error;
                        state.finish(*done);
                    }
                    Lookup::Missing(resolved) => {
                        state.resolved.insert(i, *resolved);
                        state.queue(i);
                    }
                }
            }
            while running < options.jobs.max(1) {
                let next = state.next_fitting(|need| {
                    used_gpu + need.gpu <= pipeline.limits.gpu
                        && (running == 0 || used_cpu + need.cpu <= pipeline.limits.cpu)
                });
                let Some(i) = next else { break };
                let need = local_need(pipeline, i);
                let entries = state.upstream_entries(i);
                state.status[i] = Status::Running;
                (used_cpu, used_gpu, running) =
                    (used_cpu + need.cpu, used_gpu + need.gpu, running + 1);
                let tx = tx.clone();
                let force = state.is_forced[i];
                let resolved = state.resolved.remove(&i);
                scope.spawn(move || {
                    let finished =
                        run_stage(pipeline, i, &entries, resolved, store, memo, force, ui);
                    let _ = tx.send(finished);
                });
            }
            if running == 0 {
                break;
            }
            let Ok(done) = rx.recv() else { break };
            let need = local_need(pipeline, done.stage);
            (used_cpu, used_gpu, running) = (used_cpu - need.cpu, used_gpu - need.gpu, running - 1);
            any_input_error |= done.input_error;
            state.finish(done);
        }
    });
    let mut runs = state.runs;

    memo.save()?;
    let record = RunRecord {
        id: format!("{started_unix_ms}-{}", std::process::id()),
        pipeline: pipeline_id(pipeline),
        covseg_version: crate::cache::key::COVSEG_VERSION.to_owned(),
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

/// Where each stage of a run stands, and which are ready, in graph order within each class of
/// resource needs (so the next stage that fits is found without scanning those that do not).
struct Schedule<'a> {
    pipeline: &'a Pipeline,
    dag: &'a Dag,
    /// Position of each stage of this run in graph order; `usize::MAX` for stages not in it.
    position: Vec<usize>,
    order: &'a [usize],
    is_forced: Vec<bool>,
    status: Vec<Status>,
    /// Upstream stages not done yet; every upstream stage of a selected stage is in the run.
    waiting: Vec<usize>,
    /// Stages whose upstream is done, not yet looked at.
    newly_ready: Vec<usize>,
    /// Stages to launch: (cpu, gpu) need → positions.
    ready: BTreeMap<(u32, u32), BTreeSet<usize>>,
    /// Keys of queued stages, made when they were looked up.
    resolved: BTreeMap<usize, Resolved>,
    runs: BTreeMap<usize, StageRun>,
}

impl<'a> Schedule<'a> {
    fn new(pipeline: &'a Pipeline, dag: &'a Dag, order: &'a [usize], forced: &[usize]) -> Self {
        let count = pipeline.stages.len();
        let mut position = vec![usize::MAX; count];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        let mut is_forced = vec![false; count];
        for &i in forced {
            is_forced[i] = true;
        }
        let mut waiting = vec![0; count];
        let mut newly_ready = Vec::new();
        for &i in order {
            waiting[i] = dag.upstream(i).len();
            if waiting[i] == 0 {
                newly_ready.push(i);
            }
        }
        // Popped from the back: first in graph order first.
        newly_ready.reverse();
        Self {
            pipeline,
            dag,
            position,
            order,
            is_forced,
            status: (0..count).map(|_| Status::Pending).collect(),
            waiting,
            newly_ready,
            ready: BTreeMap::new(),
            resolved: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    fn upstream_entries(&self, i: usize) -> BTreeMap<String, Entry> {
        self.dag
            .upstream(i)
            .into_iter()
            .filter_map(|u| match &self.status[u] {
                Status::Done(e) => Some((self.pipeline.stages[u].name.clone(), (**e).clone())),
                _ => None,
            })
            .collect()
    }

    fn queue(&mut self, i: usize) {
        let need = local_need(self.pipeline, i);
        self.ready
            .entry((need.cpu, need.gpu))
            .or_default()
            .insert(self.position[i]);
    }

    /// The first stage in graph order whose needs `fits` accepts, taken off the ready set.
    fn next_fitting(
        &mut self,
        fits: impl Fn(crate::pipeline::kind::Resources) -> bool,
    ) -> Option<usize> {
        let (class, p) = self
            .ready
            .iter()
            .filter(|((cpu, gpu), _)| {
                fits(crate::pipeline::kind::Resources {
                    cpu: *cpu,
                    gpu: *gpu,
                })
            })
            .filter_map(|(class, set)| set.first().map(|p| (*class, *p)))
            .min_by_key(|(_, p)| *p)?;
        let set = self.ready.get_mut(&class)?;
        set.remove(&p);
        if set.is_empty() {
            self.ready.remove(&class);
        }
        Some(self.order[p])
    }

    /// Records a finished stage; its downstream stages become ready, or blocked if it failed.
    fn finish(&mut self, done: Finished) {
        let i = done.stage;
        self.runs.insert(i, done.run);
        match done.entry {
            Some(entry) => {
                self.status[i] = Status::Done(Box::new(entry));
                for d in self.dag.downstream(i) {
                    if self.position[d] == usize::MAX {
                        continue;
                    }
                    self.waiting[d] -= 1;
                    if self.waiting[d] == 0 && matches!(self.status[d], Status::Pending) {
                        self.newly_ready.push(d);
                    }
                }
            }
            None => {
                self.status[i] = Status::Failed;
                // Stages behind a failure cannot run.
                let mut behind = self.dag.downstream(i);
                while let Some(d) = behind.pop() {
                    if self.position[d] == usize::MAX || !matches!(self.status[d], Status::Pending)
                    {
                        continue;
                    }
                    self.status[d] = Status::Blocked;
                    let stage = &self.pipeline.stages[d];
                    warn!(stage = %stage.name, "blocked: an upstream stage failed");
                    self.runs.insert(
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
                    behind.extend(self.dag.downstream(d));
                }
            }
        }
    }
}

/// What a stage takes from this machine: nothing when it runs as a cluster job.
fn local_need(pipeline: &Pipeline, i: usize) -> crate::pipeline::kind::Resources {
    let stage = &pipeline.stages[i];
    if crate::running::remote::job_of(pipeline, stage).is_some() {
        crate::pipeline::kind::Resources { cpu: 0, gpu: 0 }
    } else {
        stage.resources
    }
}

/// What looking a stage up found.
enum Lookup {
    /// In the cache, or its key cannot be made (that failure is final too).
    Done(Box<Finished>),
    /// It has to run, under this key.
    Missing(Box<Resolved>),
}

/// Looks a stage up in the cache.
fn try_cached(
    pipeline: &Pipeline,
    i: usize,
    upstream: &BTreeMap<String, Entry>,
    store: &ArtifactStore,
    memo: &HashMemo,
) -> Lookup {
    let stage = &pipeline.stages[i];
    let started = Instant::now();
    let mut run = StageRun {
        name: stage.name.clone(),
        kind: stage.kind.spec().name.into(),
        outcome: StageOutcome::Hit,
        key: None,
        parts: None,
        sources: Default::default(),
        seconds: 0.0,
        error: None,
    };
    let found = resolve::resolve(pipeline, stage, upstream, memo).and_then(|resolved| {
        let entry = store.lookup(&resolved.key)?;
        Ok((entry, resolved))
    });
    run.seconds = started.elapsed().as_secs_f64();
    match found {
        Ok((Some(entry), resolved)) => {
            info!(stage = %stage.name, key = %entry.record.key.short(), "cached");
            run.key = Some(resolved.key);
            run.parts = Some(resolved.parts);
            run.sources = resolved.sources;
            Lookup::Done(Box::new(Finished {
                stage: i,
                run,
                entry: Some(entry),
                input_error: false,
            }))
        }
        Ok((None, resolved)) => Lookup::Missing(Box::new(resolved)),
        Err(e) => {
            let failure = StageFailure::from(e);
            error!(stage = %stage.name, "failed: {}", failure.message);
            run.outcome = StageOutcome::Failed;
            run.error = Some(failure.message);
            Lookup::Done(Box::new(Finished {
                stage: i,
                run,
                entry: None,
                input_error: failure.input_error,
            }))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    pipeline: &Pipeline,
    i: usize,
    upstream: &BTreeMap<String, Entry>,
    resolved: Option<Resolved>,
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
    let result = resolved
        .map_or_else(|| resolve::resolve(pipeline, stage, upstream, memo), Ok)
        .map_err(StageFailure::from)
        .and_then(|resolved| {
            run.key = Some(resolved.key);
            run.parts = Some(resolved.parts.clone());
            run.sources = resolved.sources.clone();
            if crate::running::remote::job_of(pipeline, stage).is_some() {
                crate::running::remote::run_as_job(pipeline, stage, &resolved, store, force)
            } else {
                execute(
                    pipeline,
                    stage,
                    &resolved,
                    store,
                    force,
                    ui,
                    stage.resources.cpu,
                )
            }
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

/// Builds a stage's entry in this process with `threads` worker threads.
pub(crate) fn execute(
    pipeline: &Pipeline,
    stage: &Stage,
    resolved: &Resolved,
    store: &ArtifactStore,
    force: bool,
    ui: &Ui,
    threads: u32,
) -> Result<(Entry, StageOutcome), StageFailure> {
    let key = resolved.key;
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
        // Only a stage that runs gets a progress bar: a no-op run of many stages adds none.
        let progress = ui.stage_progress(&stage.name);
        let engine = EngineContext {
            store,
            parts: &resolved.parts,
            stage: &stage.name,
            pipeline: pipeline_name.clone(),
            threads: threads as usize,
            gpus: stage.resources.gpu,
            executor: &pipeline.executor,
            job: &stage.job,
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
        let outcome = run_guarded(threads as usize, || stage.kind.run(&job));
        progress.finish();
        outcome.map(|()| true)
    });
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
