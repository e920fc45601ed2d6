//! Trial segments as Slurm jobs. Segments that are ready together go as one job array whose task
//! ids are the trial numbers, so each task's output lands in its trial's log. The launcher polls
//! the controller, and a segment's result is the report file its `covseg trial` wrote to the
//! shared cache; a job that ended without one failed, with Slurm's reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::error::Result;
use crate::pipeline::executor::JobResources;
use crate::slurm::job::{JobId, Phase};
use crate::slurm::{cancel, client};
use crate::tuning::trial::{
    LaunchFailure, Outcome, Submission, TrialCommand, TrialLauncher, read_report,
};

struct Active {
    command: TrialCommand,
    /// The last state logged (`PENDING (Resources)`), to log changes only.
    seen: String,
    since: Instant,
}

pub struct SlurmLauncher {
    resources: JobResources,
    poll: Duration,
    /// Shown in `squeue`: `covseg-<stage>`.
    name: String,
    chdir: PathBuf,
    queued: Vec<TrialCommand>,
    active: BTreeMap<JobId, Active>,
    /// Submissions made, numbered for their script files.
    batches: usize,
    /// Since when the controller has not answered.
    unreachable: Option<Instant>,
}

/// A job the controller cannot find yet is given this long to appear before it counts as lost.
const GRACE: Duration = Duration::from_secs(30);

impl SlurmLauncher {
    pub fn new(resources: JobResources, poll: Duration, stage: &str) -> Result<Self> {
        client::check()?;
        Ok(Self {
            resources,
            poll,
            name: format!("covseg-{}", stage.replace('/', "-")),
            chdir: std::env::current_dir().map_err(|e| crate::error::Error::io(".", e))?,
            queued: Vec::new(),
            active: BTreeMap::new(),
            batches: 0,
            unreachable: None,
        })
    }

    fn finish(&mut self, id: JobId) -> Option<TrialCommand> {
        cancel::untrack(&[id]);
        self.active.remove(&id).map(|a| a.command)
    }

    /// The result of a job that has ended: its report, or why there is none. After a job that
    /// completed, a report not visible yet is waited for a little: on NFS another node's new file
    /// can take a moment to appear (the README's notes on shared caches).
    fn ended(
        command: &TrialCommand,
        id: JobId,
        why: Option<(String, bool)>,
        completed: bool,
    ) -> Outcome {
        let deadline = Instant::now()
            + if completed {
                client::SETTLE
            } else {
                Duration::ZERO
            };
        loop {
            if let Ok(report) = read_report(&command.report) {
                return Ok(report);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let (what, retriable) = why.unwrap_or_else(|| {
            (
                "is no longer known to the controller (purged or lost)".into(),
                true,
            )
        });
        Err(LaunchFailure {
            message: format!(
                "slurm job {id} {what}; it wrote no report (log: {})",
                command.log.display()
            ),
            retriable,
        })
    }
}

impl TrialLauncher for SlurmLauncher {
    fn launch(&mut self, command: TrialCommand) -> Result<()> {
        let _ = std::fs::remove_file(&command.report);
        self.queued.push(command);
        Ok(())
    }

    fn flush(&mut self) -> Result<Vec<Submission>> {
        if self.queued.is_empty() {
            return Ok(Vec::new());
        }
        let commands = std::mem::take(&mut self.queued);
        // Every trial of a stage logs into the same folder, as `<trial>.log`.
        let dir = commands[0]
            .log
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        self.batches += 1;
        let tasks = commands
            .iter()
            .map(|c| {
                let mut line = vec![c.program.clone().into_os_string()];
                line.extend(c.args.iter().cloned());
                (Some(c.trial as u64), line)
            })
            .collect();
        let script = dir.join(format!("job-{}-{}.sh", std::process::id(), self.batches));
        let submitted = client::submit(&client::Submission {
            name: self.name.clone(),
            tasks,
            output: dir.join("%a.log"),
            script,
            chdir: &self.chdir,
            resources: &self.resources,
        })?;
        cancel::track(&submitted.ids);
        let mut out = Vec::new();
        for (command, id) in commands.into_iter().zip(submitted.ids) {
            info!(
                "trial {}: segment to epoch {} is slurm job {id}",
                command.trial, command.until
            );
            out.push(Submission {
                trial: command.trial,
                until: command.until,
                job: id.to_string(),
            });
            self.active.insert(
                id,
                Active {
                    command,
                    seen: String::new(),
                    since: Instant::now(),
                },
            );
        }
        Ok(out)
    }

    fn adopt(&mut self, command: TrialCommand, job: &str) -> Result<bool> {
        let Some(id) = JobId::parse(job) else {
            return Ok(false);
        };
        let known = client::status(&[id.job])?;
        let active = known.get(&id).is_some_and(|s| s.phase() == Phase::Active);
        // A job that ended is taken over only for the report it wrote; one that ended without a
        // report (cancelled with the earlier coordinator, lost) is simply launched again.
        if !active && read_report(&command.report).is_err() {
            return Ok(false);
        }
        let state = known.get(&id).map_or("gone", |s| s.state.as_str());
        info!(
            "trial {}: adopting slurm job {id} ({state}) from an earlier run",
            command.trial
        );
        cancel::track(&[id]);
        self.active.insert(
            id,
            Active {
                command,
                seen: String::new(),
                // A job the controller has forgotten is read at the next look, not after a grace.
                since: if known.contains_key(&id) {
                    Instant::now()
                } else {
                    Instant::now()
                        .checked_sub(GRACE)
                        .unwrap_or_else(Instant::now)
                },
            },
        );
        Ok(true)
    }

    fn wait(&mut self) -> Option<(TrialCommand, Outcome)> {
        loop {
            if self.active.is_empty() {
                return None;
            }
            let jobs: Vec<u64> = {
                let mut j: Vec<u64> = self.active.keys().map(|id| id.job).collect();
                j.dedup();
                j
            };
            let known = match client::status(&jobs) {
                Ok(k) => {
                    self.unreachable = None;
                    k
                }
                Err(e) => {
                    // A controller that does not answer for a while (restart, failover) is
                    // waited out; the jobs go on without it. One that stays away fails the
                    // segments instead of hanging the search.
                    let since = *self.unreachable.get_or_insert_with(Instant::now);
                    if since.elapsed() >= client::UNREACHABLE {
                        let id = *self.active.keys().next()?;
                        let _ = client::cancel(&[id]);
                        let command = self.finish(id)?;
                        let message = format!(
                            "the Slurm controller has not answered for {} minutes ({e}); slurm job {id} was given up",
                            client::UNREACHABLE.as_secs() / 60
                        );
                        return Some((
                            command,
                            Err(LaunchFailure {
                                message,
                                retriable: false,
                            }),
                        ));
                    }
                    warn!("cannot read the Slurm queue, trying again: {e}");
                    std::thread::sleep(self.poll.max(Duration::from_secs(2)));
                    continue;
                }
            };
            let ids: Vec<JobId> = self.active.keys().copied().collect();
            for id in ids {
                let status = known.get(&id).cloned();
                let active = self.active.get_mut(&id)?;
                let Some(status) = status else {
                    if active.since.elapsed() < GRACE {
                        continue;
                    }
                    let command = self.finish(id)?;
                    let outcome = Self::ended(&command, id, None, false);
                    return Some((command, outcome));
                };
                let seen = if status.reason.is_empty() || status.reason == "None" {
                    status.state.clone()
                } else {
                    format!("{} ({})", status.state, status.reason)
                };
                if seen != active.seen {
                    info!("trial {}: slurm job {id} {seen}", active.command.trial);
                    active.seen = seen;
                }
                let why = match status.phase() {
                    Phase::Active => continue,
                    Phase::Completed => None,
                    Phase::Lost => Some((status.explain(), true)),
                    Phase::Failed => Some((status.explain(), false)),
                    Phase::Impossible => {
                        let _ = client::cancel(&[id]);
                        Some((
                            format!(
                                "can never start: pending with reason {}; check [executor] against `sinfo`",
                                status.reason
                            ),
                            false,
                        ))
                    }
                };
                let command = self.finish(id)?;
                let outcome = match why {
                    None => Self::ended(&command, id, Some(("completed".into(), false)), true),
                    Some(why) => Self::ended(&command, id, Some(why), false),
                };
                return Some((command, outcome));
            }
            std::thread::sleep(self.poll);
        }
    }
}

impl Drop for SlurmLauncher {
    /// A tune that stops early (a failure elsewhere) does not leave its jobs running.
    fn drop(&mut self) {
        let ids: Vec<JobId> = self.active.keys().copied().collect();
        if !ids.is_empty() {
            let _ = client::cancel(&ids);
            cancel::untrack(&ids);
        }
    }
}
