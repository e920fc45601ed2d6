//! The integration tests: each file drives the real `covseg` binary in a temporary folder.

mod bad_data;
mod cache;
mod cli;
mod concurrency;
mod config_errors;
mod demo;
mod kill;
mod params_from;
mod run;
mod submission;
mod test;
mod train;
mod tune;
