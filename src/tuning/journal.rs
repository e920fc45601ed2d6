//! The tune journal's events, appended by the tuner alone, and the replay that rebuilds a study
//! (and what the scheduler did to its segments) from them when a killed tune resumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use covseg_stages::tune::{Job, Sample, Study};

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(super) enum Event {
    /// A run of the tune stage began (the first, or a resumed one).
    Session { at_ms: u64 },
    Trial {
        trial: usize,
        params: Sample,
        key: String,
        at_ms: u64,
    },
    Start {
        trial: usize,
        until: usize,
        at_ms: u64,
    },
    Result {
        trial: usize,
        until: usize,
        scores: Vec<f64>,
        complete: bool,
        cached: bool,
        seconds: f64,
        at_ms: u64,
        /// When the trial process ran the segment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ran_ms: Option<[u64; 2]>,
    },
    Failed {
        trial: usize,
        until: usize,
        message: String,
        seconds: f64,
        at_ms: u64,
    },
    /// The segment went to a scheduler as this job.
    Submitted {
        trial: usize,
        until: usize,
        job: String,
        at_ms: u64,
    },
    /// The machine lost the segment (a cancelled job, a failed node); it runs again.
    Retried {
        trial: usize,
        until: usize,
        reason: String,
        at_ms: u64,
    },
}

impl Event {
    pub(super) fn at_ms(&self) -> u64 {
        match self {
            Self::Session { at_ms }
            | Self::Trial { at_ms, .. }
            | Self::Start { at_ms, .. }
            | Self::Result { at_ms, .. }
            | Self::Failed { at_ms, .. }
            | Self::Submitted { at_ms, .. }
            | Self::Retried { at_ms, .. } => *at_ms,
        }
    }
}

pub(super) fn now_ms() -> u64 {
    crate::cache::store::now_unix_ms() as u64
}

/// What the journal says of segments beyond the study: the jobs they went to and their retries.
#[derive(Default)]
pub(super) struct History {
    /// (trial, until) → the scheduler's job id of its latest submission.
    pub(super) submitted: BTreeMap<(usize, usize), String>,
    /// (trial, until) → why each retry happened, in order.
    pub(super) retried: BTreeMap<(usize, usize), Vec<String>>,
}

impl History {
    pub(super) fn retry(&mut self, trial: usize, until: usize, reason: String) {
        self.retried.entry((trial, until)).or_default().push(reason);
        // The job is gone: a rerun must not adopt it.
        self.submitted.remove(&(trial, until));
    }

    pub(super) fn retries_of(&self, trial: usize, until: usize) -> usize {
        self.retried.get(&(trial, until)).map_or(0, Vec::len)
    }

    pub(super) fn reasons(&self, trial: usize) -> Vec<String> {
        self.retried
            .iter()
            .filter(|((t, _), _)| *t == trial)
            .flat_map(|(_, r)| r.iter().cloned())
            .collect()
    }
}

/// Rebuilds the study from the journal; returns the wall time of the earlier runs (ms).
pub(super) fn replay(
    study: &mut Study,
    keys: &mut BTreeMap<usize, String>,
    ran_ms: &mut BTreeMap<usize, Vec<[u64; 2]>>,
    history: &mut History,
    events: &[Event],
) -> u64 {
    let mut earlier_ms = 0u64;
    let mut session: Option<(u64, u64)> = None;
    for event in events {
        match event {
            Event::Session { at_ms } => {
                if let Some((start, last)) = session {
                    earlier_ms += last.saturating_sub(start);
                }
                session = Some((*at_ms, *at_ms));
            }
            Event::Trial {
                trial, params, key, ..
            } => {
                let n = study.add(params.clone());
                debug_assert_eq!(n, *trial);
                keys.insert(n, key.clone());
            }
            Event::Start { trial, until, .. } => study.started(Job {
                trial: *trial,
                until: *until,
            }),
            Event::Result {
                trial,
                scores,
                complete,
                seconds,
                ran_ms: ran,
                ..
            } => {
                if let Some(ran) = ran {
                    ran_ms.entry(*trial).or_default().push(*ran);
                }
                study.finished(*trial, scores.clone(), *complete, *seconds);
            }
            Event::Failed {
                trial,
                message,
                seconds,
                ..
            } => study.failed(*trial, message.clone(), *seconds),
            Event::Submitted {
                trial, until, job, ..
            } => {
                history.submitted.insert((*trial, *until), job.clone());
            }
            Event::Retried {
                trial,
                until,
                reason,
                ..
            } => history.retry(*trial, *until, reason.clone()),
        }
        if let Some((_, last)) = session.as_mut() {
            *last = event.at_ms();
        }
    }
    if let Some((start, last)) = session {
        earlier_ms += last.saturating_sub(start);
    }
    earlier_ms
}
