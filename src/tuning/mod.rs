//! Hyper-parameter search: the tuner that drives a study of trials, one trial segment run as its own process, and the launchers that run segments (child processes, Slurm jobs).

mod journal;
pub mod params;
pub mod slurm;
pub mod trial;
pub mod tuner;
