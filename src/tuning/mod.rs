//! Hyper-parameter search: the tuner that drives a study of trials, and one trial segment run as its own process.

pub mod trial;
pub mod tuner;
