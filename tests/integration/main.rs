//! The integration tests: each file drives the real `covseg` binary in a temporary folder.

mod alloc_count;
mod bad_data;
mod cache;
mod cli;
mod concurrency;
mod config_errors;
mod demo;
mod eda;
mod golden;
mod kill;
mod malformed;
mod metrics;
mod outputs;
mod params_from;
mod run;
mod serve;
mod slurm;
mod submission;
mod test;
mod train;
mod tune;
mod volumes;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;
