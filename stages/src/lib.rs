//! The CT domain of covseg: data readers and writers, synthetic phantoms, splits, and (in later
//! modules) augmentation, model, training, metrics and submission. Nothing here knows about caching.

pub mod augment;
pub mod augmented;
pub mod data;
pub mod error;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod render;

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};
