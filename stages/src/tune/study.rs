//! The state of a search: the trials, what each has scored per epoch, and which trial to run next
//! under asynchronous successive halving (ASHA, Li et al. 2020).
//!
//! A trial runs in segments that end at the rungs (`min_epochs · ηᵏ` epochs, and the trial's full
//! epoch count last). When a worker is free, the highest rung with a waiting trial among its best
//! `max(1, ⌊n/η⌋)` (of the `n` trials that reached that rung) promotes it to the next rung;
//! otherwise a new trial starts, while the trial budget lasts. Trials left waiting when the
//! search ends are pruned. Nothing here runs anything: the caller launches the segments and
//! reports their results, so the same study drives local processes or a cluster.

use serde::{Deserialize, Serialize};

use super::sampler::{SamplerKind, propose};
use super::space::{Sample, SearchSpace};

/// Whether and how trials are stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PrunerKind {
    /// Asynchronous successive halving.
    #[default]
    Asha,
    /// Every trial runs all its epochs.
    None,
}

/// ASHA's settings: the first rung, the reduction factor η.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrunerConfig {
    pub kind: PrunerKind,
    /// Epochs every trial runs before it can be pruned (the first rung).
    pub min_epochs: usize,
    /// η: each rung keeps the best 1/η of the trials that reached it.
    pub reduction_factor: usize,
}

impl Default for PrunerConfig {
    fn default() -> Self {
        Self {
            kind: PrunerKind::Asha,
            min_epochs: 1,
            reduction_factor: 3,
        }
    }
}

impl PrunerConfig {
    /// The epoch counts at which trials are compared, ending with `max_epochs`.
    pub fn rungs(&self, max_epochs: usize) -> Vec<usize> {
        let mut rungs = Vec::new();
        if self.kind == PrunerKind::Asha {
            let mut r = self.min_epochs.max(1);
            while r < max_epochs {
                rungs.push(r);
                r = r.saturating_mul(self.reduction_factor.max(2));
            }
        }
        rungs.push(max_epochs);
        rungs
    }
}

/// How a trial ended (or where it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    Running,
    /// Stopped at a rung, may still be promoted.
    Waiting,
    /// Ran all its epochs (or stopped early by its own early stopping).
    Completed,
    /// Stopped at a rung and not promoted before the search ended.
    Pruned,
    Failed,
}

/// One trial's params and what it scored so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub number: usize,
    pub sample: Sample,
    /// Validation score after each epoch done.
    pub scores: Vec<f64>,
    /// The run is complete: all epochs, or its own early stopping ended it.
    pub complete: bool,
    pub failure: Option<String>,
    /// The epoch count the running segment ends at.
    pub running_until: Option<usize>,
    /// Wall time of its segments.
    pub seconds: f64,
    pub segments: usize,
}

impl Trial {
    /// The best score within the first `epochs` epochs.
    pub fn score_at(&self, epochs: usize) -> Option<f64> {
        self.scores[..epochs.min(self.scores.len())]
            .iter()
            .copied()
            .filter(|s| s.is_finite())
            .reduce(f64::max)
    }

    pub fn best_score(&self) -> Option<f64> {
        self.score_at(self.scores.len())
    }

    /// The epoch (1-based) of the best score.
    pub fn best_epoch(&self) -> Option<usize> {
        let best = self.best_score()?;
        self.scores.iter().position(|&s| s == best).map(|i| i + 1)
    }
}

/// What a free worker should do: run `trial` until it has `until` epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub trial: usize,
    pub until: usize,
}

/// The settings a study needs besides the space.
#[derive(Debug, Clone)]
pub struct StudySettings {
    pub sampler: SamplerKind,
    pub startup_trials: usize,
    pub trials: usize,
    pub pruner: PrunerConfig,
    pub max_epochs: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct Study {
    settings: StudySettings,
    space: SearchSpace,
    rungs: Vec<usize>,
    trials: Vec<Trial>,
}

impl Study {
    pub fn new(settings: StudySettings, space: SearchSpace) -> Self {
        let rungs = settings.pruner.rungs(settings.max_epochs);
        Self {
            settings,
            space,
            rungs,
            trials: Vec::new(),
        }
    }

    pub fn rungs(&self) -> &[usize] {
        &self.rungs
    }

    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    pub fn trial(&self, number: usize) -> Option<&Trial> {
        self.trials.get(number)
    }

    /// Whether the trial budget allows another trial.
    pub fn can_start_new(&self) -> bool {
        self.trials.len() < self.settings.trials
    }

    /// The params the sampler proposes for the next new trial.
    pub fn propose(&self) -> Sample {
        let ranked = self.ranked();
        propose(
            self.settings.sampler,
            &self.space,
            &ranked,
            self.settings.startup_trials,
            self.settings.seed,
            self.trials.len(),
        )
    }

    /// Adds a trial with these params (a new one, or one replayed from the journal); returns its
    /// number.
    pub fn add(&mut self, sample: Sample) -> usize {
        let number = self.trials.len();
        self.trials.push(Trial {
            number,
            sample,
            scores: Vec::new(),
            complete: false,
            failure: None,
            running_until: None,
            seconds: 0.0,
            segments: 0,
        });
        number
    }

    /// The first job for a new trial: up to the first rung.
    pub fn first_job(&self, trial: usize) -> Job {
        Job {
            trial,
            until: self.rungs[0],
        }
    }

    pub fn started(&mut self, job: Job) {
        if let Some(t) = self.trials.get_mut(job.trial) {
            t.running_until = Some(job.until);
        }
    }

    /// Records a segment's result: the scores of all epochs done so far.
    pub fn finished(&mut self, trial: usize, scores: Vec<f64>, complete: bool, seconds: f64) {
        let max_epochs = self.settings.max_epochs;
        if let Some(t) = self.trials.get_mut(trial) {
            t.running_until = None;
            t.complete = complete || scores.len() >= max_epochs;
            t.scores = scores;
            t.seconds += seconds;
            t.segments += 1;
        }
    }

    pub fn failed(&mut self, trial: usize, message: String, seconds: f64) {
        if let Some(t) = self.trials.get_mut(trial) {
            t.running_until = None;
            t.failure = Some(message);
            t.seconds += seconds;
            t.segments += 1;
        }
    }

    /// Jobs that were running when the study was last recorded (a killed run): they come first.
    pub fn in_flight(&self) -> Vec<Job> {
        self.trials
            .iter()
            .filter_map(|t| {
                t.running_until.map(|until| Job {
                    trial: t.number,
                    until,
                })
            })
            .collect()
    }

    /// The index of the highest rung the trial has reached.
    fn rung_reached(&self, t: &Trial) -> Option<usize> {
        self.rungs.iter().rposition(|&r| t.scores.len() >= r)
    }

    /// The trials competing at rung `k` with their scores there, best first.
    fn leaderboard(&self, k: usize) -> Vec<(usize, f64)> {
        let r = self.rungs[k];
        let mut board: Vec<(usize, f64)> = self
            .trials
            .iter()
            .filter(|t| {
                t.failure.is_none() && (t.scores.len() >= r || (t.complete && !t.scores.is_empty()))
            })
            .map(|t| (t.number, t.score_at(r).unwrap_or(f64::NEG_INFINITY)))
            .collect();
        board.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        board
    }

    /// A waiting trial that ASHA promotes to its next rung, from the highest rung down.
    pub fn next_promotion(&self) -> Option<Job> {
        let eta = self.settings.pruner.reduction_factor.max(2);
        for k in (0..self.rungs.len().saturating_sub(1)).rev() {
            let board = self.leaderboard(k);
            let keep = (board.len() / eta).max(1);
            for &(number, _) in board.iter().take(keep) {
                let t = &self.trials[number];
                if self.state(t, false) == TrialState::Waiting && self.rung_reached(t) == Some(k) {
                    return Some(Job {
                        trial: number,
                        until: self.rungs[k + 1],
                    });
                }
            }
        }
        None
    }

    /// The trial's state; `over` says the search has ended, so waiting trials count as pruned.
    pub fn state(&self, t: &Trial, over: bool) -> TrialState {
        if t.failure.is_some() {
            TrialState::Failed
        } else if t.running_until.is_some() {
            TrialState::Running
        } else if t.complete {
            TrialState::Completed
        } else if over {
            TrialState::Pruned
        } else {
            TrialState::Waiting
        }
    }

    /// Samples of the trials with scores, best first: further rungs first, then by score; failed
    /// trials last. This is what the sampler learns from.
    pub fn ranked(&self) -> Vec<&Sample> {
        let mut scored: Vec<(&Trial, usize, f64)> = self
            .trials
            .iter()
            .filter(|t| t.failure.is_some() || !t.scores.is_empty())
            .map(|t| {
                let level = if t.failure.is_some() {
                    0
                } else if t.complete {
                    self.rungs.len() + 1
                } else {
                    self.rung_reached(t).map_or(0, |k| k + 1)
                };
                (t, level, t.best_score().unwrap_or(f64::NEG_INFINITY))
            })
            .collect();
        scored.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(b.2.total_cmp(&a.2))
                .then(a.0.number.cmp(&b.0.number))
        });
        scored.into_iter().map(|(t, ..)| &t.sample).collect()
    }

    /// The best complete trial; when none completed, the best of those that got furthest.
    pub fn best(&self) -> Option<&Trial> {
        let key = |t: &Trial| (t.complete, self.rung_reached(t), t.best_score());
        self.trials
            .iter()
            .filter(|t| t.failure.is_none() && t.best_score().is_some())
            .max_by(|a, b| {
                let (ka, kb) = (key(a), key(b));
                ka.0.cmp(&kb.0)
                    .then(ka.1.cmp(&kb.1))
                    .then(
                        ka.2.unwrap_or(f64::NEG_INFINITY)
                            .total_cmp(&kb.2.unwrap_or(f64::NEG_INFINITY)),
                    )
                    .then(b.number.cmp(&a.number))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::space::Distribution;
    use serde_json::json;

    fn study(trials: usize, pruner: PrunerConfig, max_epochs: usize) -> Study {
        Study::new(
            StudySettings {
                sampler: SamplerKind::Random,
                startup_trials: 2,
                trials,
                pruner,
                max_epochs,
                seed: 1,
            },
            SearchSpace::from([("lr".into(), Distribution::LogUniform(1e-4, 1e-2))]),
        )
    }

    #[test]
    fn rungs_grow_by_eta_and_end_at_max_epochs() {
        let asha = |min_epochs, reduction_factor| PrunerConfig {
            kind: PrunerKind::Asha,
            min_epochs,
            reduction_factor,
        };
        assert_eq!(asha(1, 3).rungs(9), vec![1, 3, 9]);
        assert_eq!(asha(1, 2).rungs(6), vec![1, 2, 4, 6]);
        assert_eq!(asha(2, 3).rungs(4), vec![2, 4]);
        assert_eq!(asha(5, 3).rungs(4), vec![4]);
        let none = PrunerConfig {
            kind: PrunerKind::None,
            ..PrunerConfig::default()
        };
        assert_eq!(none.rungs(9), vec![9]);
    }

    /// Drives a study to the end with a fixed score per trial (`quality[n]` each epoch, rising
    /// slowly), one worker; returns the study.
    fn drive(quality: &[f64], max_epochs: usize) -> Study {
        let mut s = study(quality.len(), PrunerConfig::default(), max_epochs);
        loop {
            let job = match s.next_promotion() {
                Some(job) => job,
                None if s.can_start_new() => {
                    let sample = s.propose();
                    let n = s.add(sample);
                    s.first_job(n)
                }
                None => break,
            };
            s.started(job);
            let q = quality[job.trial];
            let scores: Vec<f64> = (1..=job.until).map(|e| q + 0.001 * e as f64).collect();
            s.finished(job.trial, scores, false, 1.0);
        }
        s
    }

    #[test]
    fn asha_completes_the_best_and_prunes_the_rest_early() {
        let quality = [0.5, 0.2, 0.9, 0.1, 0.3, 0.8, 0.4, 0.6];
        let s = drive(&quality, 9);
        let states: Vec<TrialState> = s.trials().iter().map(|t| s.state(t, true)).collect();
        let best = s.best().unwrap();
        assert_eq!(
            best.number, 2,
            "the best trial is the one with the best quality"
        );
        assert_eq!(states[2], TrialState::Completed);
        assert_eq!(s.trials()[2].scores.len(), 9);
        for t in s.trials() {
            if states[t.number] == TrialState::Pruned {
                assert!(
                    t.scores.len() < 9,
                    "trial {} pruned after all epochs",
                    t.number
                );
            }
        }
        let pruned = states
            .iter()
            .filter(|&&st| st == TrialState::Pruned)
            .count();
        assert!(pruned >= 4, "states {states:?}");
        // Budget: far fewer epochs than 8 full runs.
        let epochs: usize = s.trials().iter().map(|t| t.scores.len()).sum();
        assert!(epochs < 8 * 9 / 2, "{epochs} epochs");
    }

    #[test]
    fn without_pruning_every_trial_completes() {
        let mut s = study(
            3,
            PrunerConfig {
                kind: PrunerKind::None,
                ..Default::default()
            },
            4,
        );
        for q in [0.1, 0.3, 0.2] {
            assert_eq!(s.next_promotion(), None);
            let n = s.add(s.propose());
            let job = s.first_job(n);
            assert_eq!(job.until, 4);
            s.started(job);
            s.finished(n, vec![q; 4], false, 0.5);
        }
        assert!(!s.can_start_new());
        assert!(
            s.trials()
                .iter()
                .all(|t| s.state(t, true) == TrialState::Completed)
        );
        assert_eq!(s.best().unwrap().number, 1);
    }

    #[test]
    fn a_job_in_flight_is_reported_and_failed_trials_rank_last() {
        let mut s = study(3, PrunerConfig::default(), 3);
        let a = s.add(
            json!({"lr": 0.001})
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .collect(),
        );
        s.started(s.first_job(a));
        assert_eq!(s.in_flight(), vec![Job { trial: a, until: 1 }]);
        s.failed(a, "boom".into(), 1.0);
        let b = s.add(s.propose());
        s.started(s.first_job(b));
        s.finished(b, vec![0.4], false, 1.0);
        assert_eq!(s.ranked()[0], &s.trials()[b].sample);
        assert_eq!(s.ranked().len(), 2);
        assert_eq!(s.state(&s.trials()[a], false), TrialState::Failed);
        assert_eq!(s.best().unwrap().number, b);
    }

    #[test]
    fn an_early_stopped_trial_is_complete() {
        let mut s = study(1, PrunerConfig::default(), 9);
        let n = s.add(s.propose());
        s.started(Job { trial: n, until: 3 });
        s.finished(n, vec![0.1, 0.2], true, 1.0);
        assert_eq!(s.state(&s.trials()[n], true), TrialState::Completed);
        assert_eq!(s.trials()[n].best_epoch(), Some(2));
    }
}
