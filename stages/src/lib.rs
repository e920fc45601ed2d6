//! The CT domain of covseg: data readers and writers, synthetic phantoms, splits, the U-Net model,
//! and (in later modules) augmentation, training, metrics and submission. Nothing here knows about caching.

pub mod data;
pub mod error;
pub mod model;
pub mod progress;

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};
