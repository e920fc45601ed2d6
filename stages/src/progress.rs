//! How a long stage reports how far it is, without knowing who draws the bar.

/// Receives progress from a stage. Implementations must be cheap: stages call `advance` per item.
pub trait Progress: Sync {
    /// Announces the number of work items (slices, epochs, …) and what they are called.
    fn start(&self, total: u64, unit: &str);
    /// Marks `n` more items done.
    fn advance(&self, n: u64);
    /// Corrects the total announced by `start` (a search whose length is an estimate).
    fn set_total(&self, _total: u64) {}
}

/// Progress that goes nowhere, for library users and tests.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: u64, _unit: &str) {}
    fn advance(&self, _n: u64) {}
}
