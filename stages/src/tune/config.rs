//! The `tune` stage's params as the user writes them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sampler::SamplerKind;
use super::space::{Distribution, SearchSpace};
use super::study::PrunerConfig;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuneConfig {
    /// How many configurations to try.
    pub trials: usize,
    pub sampler: SamplerKind,
    /// Random trials before TPE takes over.
    pub startup_trials: usize,
    /// Trials run at once, each as its own process; the stage's CPU threads are shared among them.
    pub parallel: usize,
    /// Wall-time budget in minutes (0: none). Once spent, no trial starts or is promoted; the
    /// running ones finish. Counted over resumed runs too.
    pub max_minutes: f64,
    pub pruner: PrunerConfig,
    /// The searched train params by dotted path, e.g. `lr = { log_uniform = [1e-4, 1e-2] }`.
    pub space: SearchSpace,
    /// The train params every trial starts from (a `[params.train]` table, as a train stage's
    /// params); the searched ones are overridden per trial. `epochs` is each trial's full length.
    pub train: Value,
}

impl Default for TuneConfig {
    fn default() -> Self {
        Self {
            trials: 8,
            sampler: SamplerKind::Tpe,
            startup_trials: 4,
            parallel: 1,
            max_minutes: 0.0,
            pruner: PrunerConfig::default(),
            space: SearchSpace::from([
                ("lr".to_owned(), Distribution::LogUniform(1e-4, 1e-2)),
                (
                    "batch_size".to_owned(),
                    Distribution::Choice(vec![json!(4), json!(8), json!(16)]),
                ),
                (
                    "model.encoder_depth".to_owned(),
                    Distribution::Choice(vec![json!(3), json!(4), json!(5)]),
                ),
            ]),
            train: Value::Object(Default::default()),
        }
    }
}

impl TuneConfig {
    /// Checks the tune-level fields; the train params and the space's paths are checked by the
    /// caller, which knows the train params.
    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.trials) {
            return Err(Error::invalid_param(
                "trials",
                format!("expected 1…10000, got {}", self.trials),
            ));
        }
        if !(1..=256).contains(&self.parallel) {
            return Err(Error::invalid_param(
                "parallel",
                format!("expected 1…256 trials at once, got {}", self.parallel),
            ));
        }
        if !(self.max_minutes.is_finite() && self.max_minutes >= 0.0) {
            return Err(Error::invalid_param(
                "max_minutes",
                format!(
                    "expected minutes ≥ 0 (0: no limit), got {}",
                    self.max_minutes
                ),
            ));
        }
        if self.pruner.min_epochs == 0 {
            return Err(Error::invalid_param(
                "pruner",
                "min_epochs: expected at least 1 epoch before a trial can be pruned",
            ));
        }
        if self.pruner.reduction_factor < 2 {
            return Err(Error::invalid_param(
                "pruner",
                format!(
                    "reduction_factor: expected 2 or more (each rung keeps 1/η), got {}",
                    self.pruner.reduction_factor
                ),
            ));
        }
        if self.space.is_empty() {
            return Err(Error::invalid_param(
                "space",
                "nothing to search: add a param, e.g. `lr = { log_uniform = [1e-4, 1e-2] }`",
            ));
        }
        for (path, dist) in &self.space {
            dist.validate(path)
                .map_err(|m| Error::invalid_param("space", m))?;
        }
        if !self.train.is_object() {
            return Err(Error::invalid_param(
                "train",
                "expected a table of train params",
            ));
        }
        Ok(())
    }
}
