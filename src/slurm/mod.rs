//! Slurm as an executor: batch jobs submitted with `sbatch`, watched with `scontrol`, cancelled
//! with `scancel`. Generic over what the jobs run: the tune stage sends trial segments
//! (`tuning::slurm`), the run sends whole stages (`running::remote`).

pub mod cancel;
pub mod client;
pub mod job;
