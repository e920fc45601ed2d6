//! What every request handler shares: the bundle's recipe and version, the model queue, health
//! flags, limits and metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use covseg_stages::serving::batcher::Batcher;
use covseg_stages::serving::decode::DecodeLimits;
use covseg_stages::serving::segment::Recipe;
use covseg_stages::serving::volume::VolumeLimits;

use super::metrics::Metrics;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub decode: DecodeLimits,
    /// Whole request, and each job's deadline.
    pub timeout: Duration,
    pub body_timeout: Duration,
    pub queue: usize,
    /// Requests decoding, queued, in the model or being encoded at once; more are 503s. It
    /// bounds the memory of decoded uploads, which the queue alone does not.
    pub in_flight: usize,
    /// Most slices per forward pass: a volume goes to the model in batches of this size.
    pub max_batch: usize,
    /// Uploaded volumes: dimensions and unpacked size.
    pub volume: VolumeLimits,
    /// Largest volume upload, in bytes.
    pub max_volume_body: usize,
    /// A volume request's whole time: upload, model, answer.
    pub volume_timeout: Duration,
}

/// A held place among [`Limits::in_flight`]; released on drop.
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The held volume place; released on drop.
pub struct VolumeSlot<'a>(&'a AtomicBool);

impl Drop for VolumeSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

pub struct AppState {
    pub recipe: Recipe,
    /// The bundle's blake3 digest (hex).
    pub version: String,
    pub batcher: Batcher,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Default pixel spacing (mm) for areas.
    pub spacing: Option<(f64, f64)>,
    loaded: AtomicBool,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    volume_busy: AtomicBool,
}

impl AppState {
    pub fn new(
        recipe: Recipe,
        version: String,
        batcher: Batcher,
        limits: Limits,
        spacing: Option<(f64, f64)>,
    ) -> Self {
        Self {
            recipe,
            version,
            batcher,
            limits,
            metrics: Metrics::new(),
            spacing,
            loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            volume_busy: AtomicBool::new(false),
        }
    }

    /// Loaded, warmed up, and not draining.
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// The model is loaded and a warm-up inference succeeded.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Shutting down: readiness turns 503 and no new work is taken.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A place for one more request in progress, if there is one.
    pub fn in_flight(&self) -> Option<Slot<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(&self.in_flight);
        (before < self.limits.in_flight).then_some(slot)
    }

    /// The one place for a volume in progress, if it is free: a volume holds memory in the
    /// hundreds of MB and the model for minutes, so volumes go one at a time.
    pub fn volume_slot(&self) -> Option<VolumeSlot<'_>> {
        self.volume_busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| VolumeSlot(&self.volume_busy))
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
