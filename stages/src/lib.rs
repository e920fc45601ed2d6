//! The CT domain of covseg: data readers and writers, synthetic phantoms, splits, augmentation, the
//! U-Net model, metrics and plots (training and submission to come). Nothing here knows about caching.

pub mod augment;
pub mod augmented;
pub mod data;
pub mod error;
pub mod metrics;
#[cfg(feature = "model")]
pub mod model;
pub mod plot;
pub mod progress;
pub mod render;
#[cfg(feature = "model")]
pub mod training;

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};
