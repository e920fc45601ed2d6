//! The CT domain of covseg: data readers and writers, synthetic phantoms, splits, augmentation, the
//! U-Net model and its training, ImageNet weights, metrics and plots. Nothing here knows about
//! caching.

pub mod allocator;
pub mod augment;
pub mod augmented;
pub mod data;
pub mod error;
#[cfg(feature = "model")]
pub mod evaluate;
pub mod metrics;
#[cfg(feature = "model")]
pub mod model;
pub mod plot;
#[cfg(feature = "model")]
pub mod predict;
#[cfg(feature = "model")]
pub mod pretrained;
pub mod progress;
pub mod render;
#[cfg(feature = "model")]
pub mod serving;
pub mod submission;
#[cfg(feature = "model")]
pub mod training;
pub mod tune;
pub mod volume;

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};
