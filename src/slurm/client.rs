//! The Slurm commands covseg runs: `sbatch` to submit, `scontrol show job -o` to look (with
//! `sacct` where accounting exists, for jobs the controller has forgotten), `scancel` to cancel.
//! They find the cluster as any user's commands do: `SLURM_CONF` and the environment pass through.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::executor::JobResources;
use crate::slurm::job::{JobId, JobStatus, parse_sacct, parse_scontrol};

/// How long what a completed job wrote (a report, a cache entry) may take to become visible to
/// this process: NFS clients cache lookups, so another node's new file can lag a little.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a controller that does not answer is waited for before the jobs it holds count as
/// failed (a restart or a failover takes well under this).
pub const UNREACHABLE: std::time::Duration = std::time::Duration::from_secs(600);

/// One batch job to submit: a job, or an array whose task `t` runs `tasks[t]`.
pub struct Submission<'a> {
    pub name: String,
    /// (task id, command line). One entry without a task id is a plain job.
    pub tasks: Vec<(Option<u64>, Vec<OsString>)>,
    /// Slurm's `--output` pattern (`%a` is the task id, `%j` the job id); stderr goes there too.
    pub output: PathBuf,
    /// Where the batch script is written before it is submitted (sbatch reads it then).
    pub script: PathBuf,
    pub chdir: &'a Path,
    pub resources: &'a JobResources,
}

/// What sbatch answered.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Each task's id (`41_3`), or the job's.
    pub ids: Vec<JobId>,
}

fn quote(arg: &std::ffi::OsStr) -> Result<String> {
    let text = arg.to_str().ok_or_else(|| {
        Error::from(Diagnostic::new(format!(
            "cannot pass {} to a Slurm job: it is not UTF-8",
            arg.to_string_lossy()
        )))
    })?;
    Ok(format!("'{}'", text.replace('\'', "'\\''")))
}

fn command_line(args: &[OsString]) -> Result<String> {
    Ok(args
        .iter()
        .map(|a| quote(a))
        .collect::<Result<Vec<_>>>()?
        .join(" "))
}

/// The batch script: `exec` of the job's command, or a `case` over the array task id.
pub fn script(tasks: &[(Option<u64>, Vec<OsString>)]) -> Result<String> {
    let mut text =
        String::from("#!/bin/sh\n# Written by covseg: one batch job (or array) of its work.\n");
    match tasks {
        [(None, args)] => {
            text.push_str(&format!("exec {}\n", command_line(args)?));
        }
        _ => {
            text.push_str("case \"$SLURM_ARRAY_TASK_ID\" in\n");
            for (task, args) in tasks {
                let Some(task) = task else {
                    return Err(Error::from(Diagnostic::new("an array task without an id")));
                };
                text.push_str(&format!("  {task}) exec {} ;;\n", command_line(args)?));
            }
            text.push_str("esac\necho \"covseg: no command for array task $SLURM_ARRAY_TASK_ID\" >&2\nexit 1\n");
        }
    }
    Ok(text)
}

fn run(program: &str, args: &[String]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            let d = Diagnostic::new(format!("cannot run `{program}`: {e}"));
            if e.kind() == std::io::ErrorKind::NotFound {
                d.help("`[executor] kind = \"slurm\"` needs Slurm's client commands (sbatch, squeue, scontrol, scancel) on PATH; use kind = \"local\" on a machine without Slurm")
                    .into()
            } else {
                d.into()
            }
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// Checks that the client commands are here and the controller answers, once, before any work is
/// sent: a missing Slurm is one clear error, not a failure per trial.
pub fn check() -> Result<()> {
    let out = run("scontrol", &["ping".into()])?;
    let said = text(&out.stdout);
    if !out.status.success() || !said.contains("is UP") {
        return Err(Diagnostic::new(format!(
            "the Slurm controller does not answer: `scontrol ping` said {:?}{}",
            said,
            if out.stderr.is_empty() { String::new() } else { format!(" ({})", text(&out.stderr)) }
        ))
        .help("check SLURM_CONF and that slurmctld runs (`sinfo`), or set [executor] kind = \"local\"")
        .into());
    }
    Ok(())
}

/// Writes the script and submits it; returns the ids of its tasks.
pub fn submit(job: &Submission<'_>) -> Result<Submitted> {
    let body = script(&job.tasks)?;
    crate::cache::atomic::write(&job.script, body.as_bytes())?;
    let mut args = vec![
        "--parsable".to_owned(),
        format!("--job-name={}", job.name),
        format!("--chdir={}", job.chdir.display()),
        format!("--output={}", job.output.display()),
        format!("--error={}", job.output.display()),
        "--open-mode=append".to_owned(),
        "--export=ALL".to_owned(),
    ];
    let tasks: Vec<u64> = job.tasks.iter().filter_map(|(t, _)| *t).collect();
    if !tasks.is_empty() {
        let list: Vec<String> = tasks.iter().map(u64::to_string).collect();
        args.push(format!("--array={}", list.join(",")));
    }
    args.extend(job.resources.sbatch_args());
    args.push(job.script.display().to_string());
    let out = run("sbatch", &args)?;
    if !out.status.success() {
        return Err(Diagnostic::new(format!(
            "sbatch refused job {}: {}",
            job.name,
            text(&out.stderr)
        ))
        .help("check the [executor] settings (partition, account, time, cpus, mem, gpus, sbatch_args) and the stage's resources against `sinfo`")
        .into());
    }
    // `--parsable` prints `id` or `id;cluster`.
    let said = text(&out.stdout);
    let id = said
        .split(';')
        .next()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::from(Diagnostic::new(format!(
                "sbatch answered {said:?}, not a job id"
            )))
        })?;
    let ids = if tasks.is_empty() {
        vec![JobId {
            job: id,
            task: None,
        }]
    } else {
        tasks
            .iter()
            .map(|&t| JobId {
                job: id,
                task: Some(t),
            })
            .collect()
    };
    Ok(Submitted { ids })
}

/// The status of these jobs (array ids cover all their tasks). A job the controller no longer
/// knows is looked up with `sacct` where accounting exists; one neither knows is absent.
pub fn status(jobs: &[u64]) -> Result<BTreeMap<JobId, JobStatus>> {
    let mut found = BTreeMap::new();
    let mut forgotten = Vec::new();
    for job in jobs {
        let out = run(
            "scontrol",
            &["show".into(), "job".into(), "-o".into(), job.to_string()],
        )?;
        if out.status.success() {
            found.extend(parse_scontrol(&String::from_utf8_lossy(&out.stdout)));
            continue;
        }
        let said = text(&out.stderr);
        if said.contains("Invalid job id") {
            forgotten.push(*job);
        } else {
            return Err(
                Diagnostic::new(format!("`scontrol show job {job}` failed: {said}")).into(),
            );
        }
    }
    if !forgotten.is_empty() {
        let list: Vec<String> = forgotten.iter().map(u64::to_string).collect();
        // Without accounting sacct fails; the jobs are then simply unknown.
        if let Ok(out) = run(
            "sacct",
            &[
                "-n".into(),
                "-P".into(),
                "-X".into(),
                "-o".into(),
                "JobID,State,ExitCode,Reason".into(),
                "-j".into(),
                list.join(","),
            ],
        ) && out.status.success()
        {
            found.extend(parse_sacct(&String::from_utf8_lossy(&out.stdout)));
        }
    }
    Ok(found)
}

/// Cancels these jobs (tasks or whole jobs). Unknown ids are not an error: scancel says nothing
/// of them, and the status poll that follows tells.
pub fn cancel(ids: &[JobId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let args: Vec<String> = ids.iter().map(JobId::to_string).collect();
    let out = run("scancel", &args)?;
    if !out.status.success() {
        return Err(Diagnostic::new(format!(
            "scancel {} failed: {}",
            args.join(" "),
            text(&out.stderr)
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_every_argument_and_arrays_dispatch_on_the_task_id() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let single = script(&[(None, args(&["/bin/covseg", "stage", "it's here"]))]).unwrap();
        assert!(
            single.contains("exec '/bin/covseg' 'stage' 'it'\\''s here'\n"),
            "{single}"
        );
        let array = script(&[
            (Some(3), args(&["a", "--until", "4"])),
            (Some(5), args(&["b"])),
        ])
        .unwrap();
        assert!(
            array.contains("  3) exec 'a' '--until' '4' ;;\n"),
            "{array}"
        );
        assert!(array.contains("  5) exec 'b' ;;\n"), "{array}");
        assert!(array.contains("exit 1"), "an unknown task fails");
        // The shell reads back exactly the argument written.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(single.replace("exec '/bin/covseg' 'stage'", "printf %s"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's here");
    }
}
