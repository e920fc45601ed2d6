//! The learning rate per optimiser step: a linear warm-up to the peak, then a cosine decay that
//! reaches the floor on the last step. A pure function of the step, so a resumed run matches.

/// Learning rate as a function of the (0-based) optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub floor: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// The rate of step `step`. Warm-up climbs `peak/w, 2·peak/w, …, peak` so that no step
    /// trains at rate 0; the decay then runs from `peak` (first step after warm-up) to `floor`
    /// (last step).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps <= 1 {
            return self.peak;
        }
        let progress = ((step - self.warmup_steps) as f64 / (decay_steps - 1) as f64).min(1.0);
        self.floor
            + (self.peak - self.floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: LrSchedule = LrSchedule {
        peak: 1e-3,
        floor: 1e-5,
        warmup_steps: 4,
        total_steps: 24,
    };

    #[test]
    fn warm_up_is_linear_up_to_the_peak() {
        let rates: Vec<f64> = (0..4).map(|s| SCHEDULE.at(s)).collect();
        for (s, rate) in rates.iter().enumerate() {
            assert!(
                (rate - 1e-3 * (s + 1) as f64 / 4.0).abs() < 1e-12,
                "{rates:?}"
            );
        }
    }

    #[test]
    fn cosine_falls_monotonically_from_peak_to_floor() {
        assert!((SCHEDULE.at(4) - 1e-3).abs() < 1e-12);
        assert!((SCHEDULE.at(23) - 1e-5).abs() < 1e-12);
        // Half way through the decay the rate is the mean of peak and floor.
        let half = LrSchedule {
            total_steps: 4 + 21,
            ..SCHEDULE
        };
        assert!((half.at(4 + 10) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
        let rates: Vec<f64> = (4..24).map(|s| SCHEDULE.at(s)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        assert!(
            (SCHEDULE.at(100) - 1e-5).abs() < 1e-12,
            "clamped past the end"
        );
    }

    #[test]
    fn no_warm_up_and_single_step_runs() {
        let flat = LrSchedule {
            warmup_steps: 0,
            total_steps: 1,
            ..SCHEDULE
        };
        assert_eq!(flat.at(0), 1e-3);
    }
}
