//! Early stopping on the validation score: remembers the best epoch and stops after `patience`
//! epochs without a better one. Serialisable, so a resumed run keeps counting where it was.

use serde::{Deserialize, Serialize};

/// What an epoch's score means for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: keep these weights.
    Improved,
    /// Not better, but patience is left.
    Continue,
    /// `patience` epochs in a row without improvement.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping; 0 never stops.
    pub patience: usize,
    pub best_score: Option<f64>,
    /// 1-based epoch of the best score.
    pub best_epoch: usize,
    pub epochs_without_improvement: usize,
}

impl EarlyStopping {
    pub fn new(patience: usize) -> Self {
        Self {
            patience,
            best_score: None,
            best_epoch: 0,
            epochs_without_improvement: 0,
        }
    }

    /// Records the score of (1-based) `epoch`. Only a strictly higher score improves, so a
    /// plateau counts against patience; NaN never improves.
    pub fn observe(&mut self, epoch: usize, score: f64) -> Verdict {
        if !score.is_nan() && self.best_score.is_none_or(|best| score > best) {
            self.best_score = Some(score);
            self.best_epoch = epoch;
            self.epochs_without_improvement = 0;
            return Verdict::Improved;
        }
        self.epochs_without_improvement += 1;
        if self.patience > 0 && self.epochs_without_improvement >= self.patience {
            Verdict::Stop
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_a_better_score() {
        let mut stop = EarlyStopping::new(2);
        assert_eq!(stop.observe(1, 0.5), Verdict::Improved);
        assert_eq!(stop.observe(2, 0.6), Verdict::Improved);
        assert_eq!(stop.observe(3, 0.6), Verdict::Continue);
        assert_eq!(stop.observe(4, 0.7), Verdict::Improved);
        assert_eq!(stop.observe(5, 0.1), Verdict::Continue);
        assert_eq!(stop.observe(6, f64::NAN), Verdict::Stop);
        assert_eq!((stop.best_epoch, stop.best_score), (4, Some(0.7)));
    }

    #[test]
    fn patience_zero_never_stops_and_nan_never_improves() {
        let mut stop = EarlyStopping::new(0);
        assert_eq!(stop.observe(1, f64::NAN), Verdict::Continue);
        assert_eq!(stop.observe(2, 0.2), Verdict::Improved);
        for epoch in 3..50 {
            assert_eq!(stop.observe(epoch, 0.1), Verdict::Continue);
        }
    }
}
