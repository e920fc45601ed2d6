//! The `[executor]` table: where heavy work runs. `local` (the default) runs everything in this
//! process and its children; `slurm` sends the heavy stages and tuning trials to a Slurm cluster
//! as batch jobs. The executor never enters a key: the same params give the same cache entry
//! wherever they ran.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Diagnostic, Location, Result};
use crate::pipeline::suggest;

/// Kinds that run as Slurm jobs unless `[executor] kinds` says otherwise. Tune runs in the
/// submitting process and sends its trials as jobs.
pub const DEFAULT_JOB_KINDS: &[&str] = &["train", "evaluate", "predict"];

/// The name `time` uses for tuning trials, beside the stage kinds.
pub const TRIAL: &str = "trial";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExecutor {
    kind: Option<Spanned<String>>,
    partition: Option<String>,
    account: Option<String>,
    time: Option<Spanned<toml::Value>>,
    cpus: Option<Spanned<u32>>,
    mem: Option<Spanned<toml::Value>>,
    gpus: Option<u32>,
    #[serde(default)]
    sbatch_args: Vec<String>,
    poll_interval: Option<Spanned<f64>>,
    retries: Option<u32>,
    kinds: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A stage's `resources` table: the local scheduler's `cpu` and `gpu`, and what a Slurm job of
/// this stage asks for beyond the `[executor]` defaults.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStageResources {
    pub gpu: Option<u32>,
    pub cpu: Option<u32>,
    partition: Option<String>,
    account: Option<String>,
    time: Option<Spanned<String>>,
    mem: Option<Spanned<toml::Value>>,
    sbatch_args: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    #[default]
    Local,
    Slurm(Box<SlurmConfig>),
}

impl Executor {
    pub fn slurm(&self) -> Option<&SlurmConfig> {
        match self {
            Self::Local => None,
            Self::Slurm(config) => Some(config),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Slurm(_) => "slurm",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Time limit for every job, in Slurm's format.
    pub time: Option<String>,
    /// Time limit by stage kind (and `trial`), over `time`.
    pub time_by_kind: BTreeMap<String, String>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub gpus: Option<u32>,
    pub sbatch_args: Vec<String>,
    pub poll_interval: Duration,
    /// How often a job lost to the cluster (cancelled by someone else, node failure, preemption,
    /// forgotten by the controller) is submitted again before its work counts as failed.
    pub retries: u32,
    /// Stage kinds that run as jobs.
    pub kinds: Vec<String>,
}

/// A stage's own job settings (its `resources` table).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOverrides {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub mem: Option<String>,
    pub sbatch_args: Option<Vec<String>>,
    /// `cpu` and `gpu` as the stage wrote them (not the defaults).
    pub cpu: Option<u32>,
    pub gpu: Option<u32>,
}

/// What one job asks the cluster for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResources {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub time: Option<String>,
    pub cpus: u32,
    pub mem: Option<String>,
    pub gpus: u32,
    pub extra: Vec<String>,
}

impl JobResources {
    /// The sbatch options, in a stable order.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(p) = &self.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            args.push(format!("--account={a}"));
        }
        if let Some(t) = &self.time {
            args.push(format!("--time={t}"));
        }
        args.push(format!("--cpus-per-task={}", self.cpus));
        if let Some(m) = &self.mem {
            args.push(format!("--mem={m}"));
        }
        if self.gpus > 0 {
            args.push(format!("--gres=gpu:{}", self.gpus));
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// One line for `plan` and `explain`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.partition {
            parts.push(format!("partition {p}"));
        }
        if let Some(a) = &self.account {
            parts.push(format!("account {a}"));
        }
        parts.push(format!(
            "time {}",
            self.time.as_deref().unwrap_or("(default)")
        ));
        parts.push(format!("{} cpu", self.cpus));
        if let Some(m) = &self.mem {
            parts.push(format!("mem {m}"));
        }
        if self.gpus > 0 {
            parts.push(format!("{} gpu", self.gpus));
        }
        if !self.extra.is_empty() {
            parts.push(self.extra.join(" "));
        }
        parts.join(", ")
    }
}

impl SlurmConfig {
    pub fn runs_as_job(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }

    fn time_for(&self, kind: &str) -> Option<String> {
        self.time_by_kind.get(kind).or(self.time.as_ref()).cloned()
    }

    /// A stage's job: its own settings over the executor's. `cpu` is the stage's thread count.
    pub fn stage_job(&self, kind: &str, own: &JobOverrides, cpu: u32, gpu: u32) -> JobResources {
        JobResources {
            partition: own.partition.clone().or_else(|| self.partition.clone()),
            account: own.account.clone().or_else(|| self.account.clone()),
            time: own.time.clone().or_else(|| self.time_for(kind)),
            cpus: own.cpu.or(self.cpus).unwrap_or(cpu).max(1),
            mem: own.mem.clone().or_else(|| self.mem.clone()),
            gpus: own.gpu.or(self.gpus).unwrap_or(gpu),
            extra: own
                .sbatch_args
                .clone()
                .unwrap_or_else(|| self.sbatch_args.clone()),
        }
    }

    /// A trial's job: the tune stage's own settings over the executor's, `trial`'s time limit,
    /// and `cpus` (default 1) CPUs.
    pub fn trial_job(&self, own: &JobOverrides, gpu: u32) -> JobResources {
        let mut job = self.stage_job(TRIAL, own, 1, gpu);
        job.cpus = self.cpus.unwrap_or(1).max(1);
        job
    }
}

type At<'a> = &'a dyn Fn(Range<usize>) -> Location;

fn mem_text(value: &Spanned<toml::Value>, at: At<'_>) -> Result<String> {
    let text = match value.get_ref() {
        toml::Value::Integer(mb) if *mb > 0 => return Ok(format!("{mb}M")),
        toml::Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    };
    let digits = text.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = text.len() - digits.len();
    if !digits.is_empty() && suffix <= 1 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(text);
    }
    Err(Diagnostic::new(format!("`mem` must be a size such as \"4G\" or \"500M\", not {}", value.get_ref()))
        .at(at(value.span()))
        .help("write megabytes as a number (4096) or a string with a K, M, G or T suffix, as sbatch --mem takes")
        .into())
}

/// Seconds in a Slurm time limit: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`; `None` for
/// `UNLIMITED`/`INFINITE`; `None` when it is none of these.
pub fn time_seconds(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") || text.eq_ignore_ascii_case("infinite") {
        return Some(None);
    }
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (days, rest) = match text.split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, text),
    };
    let fields = rest.split(':').map(number).collect::<Option<Vec<u64>>>()?;
    let seconds = match (days, fields.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(Some(seconds))
}

fn time_text(text: &str, span: Range<usize>, at: At<'_>) -> Result<String> {
    match time_seconds(text) {
        Some(_) => Ok(text.trim().to_owned()),
        None => Err(Diagnostic::new(format!("`{text}` is not a Slurm time limit"))
            .at(at(span))
            .help("write minutes (\"90\"), \"HH:MM:SS\" or \"D-HH:MM:SS\", as sbatch --time takes")
            .into()),
    }
}

fn reject_empty(args: &[String], what: &str, at: Location) -> Result<()> {
    if args.iter().any(|a| a.trim().is_empty()) {
        return Err(Diagnostic::new(format!("`{what}` has an empty argument"))
            .at(at)
            .help("give each sbatch option as its own string, for example [\"--qos=short\"]")
            .into());
    }
    Ok(())
}

/// Turns `[executor]` into an `Executor`; `kinds` are the registered stage kinds.
pub(crate) fn parse(
    raw: Option<Spanned<RawExecutor>>,
    kinds: &[&str],
    at: At<'_>,
) -> Result<Executor> {
    let Some(raw) = raw else {
        return Ok(Executor::Local);
    };
    let table_at = at(raw.span());
    let raw = raw.into_inner();
    let is_slurm = match &raw.kind {
        None => false,
        Some(k) => match k.get_ref().as_str() {
            "local" => false,
            "slurm" => true,
            other => {
                return Err(Diagnostic::new(format!("unknown executor `{other}`"))
                    .at(at(k.span()))
                    .help(suggest::help(other, ["local", "slurm"]))
                    .into());
            }
        },
    };
    // The Slurm settings are checked whatever the kind, so switching to slurm later does not
    // surprise.
    let mut time = None;
    let mut time_by_kind = BTreeMap::new();
    if let Some(value) = &raw.time {
        match value.get_ref() {
            toml::Value::String(s) => time = Some(time_text(s, value.span(), at)?),
            toml::Value::Table(table) => {
                for (name, v) in table {
                    let known =
                        kinds.contains(&name.as_str()) || name == TRIAL || name == "default";
                    if !known {
                        let names = kinds.iter().copied().chain([TRIAL, "default"]);
                        return Err(Diagnostic::new(format!(
                            "`time.{name}`: no stage kind is named `{name}`"
                        ))
                        .at(at(value.span()))
                        .help(suggest::help(name, names))
                        .into());
                    }
                    let Some(s) = v.as_str() else {
                        return Err(Diagnostic::new(format!(
                            "`time.{name}` must be a string such as \"2:00:00\""
                        ))
                        .at(at(value.span()))
                        .into());
                    };
                    let text = time_text(s, value.span(), at)?;
                    if name == "default" {
                        time = Some(text);
                    } else {
                        time_by_kind.insert(name.clone(), text);
                    }
                }
            }
            _ => {
                return Err(Diagnostic::new("`time` must be a string (\"2:00:00\") or a table by stage kind")
                    .at(at(value.span()))
                    .help("for example `time = { train = \"4:00:00\", trial = \"0:30:00\", default = \"1:00:00\" }`")
                    .into());
            }
        }
    }
    if let Some(cpus) = &raw.cpus
        && *cpus.get_ref() == 0
    {
        return Err(Diagnostic::new("`cpus` must be at least 1")
            .at(at(cpus.span()))
            .into());
    }
    let mem = raw.mem.as_ref().map(|m| mem_text(m, at)).transpose()?;
    let poll_interval = match &raw.poll_interval {
        None => Duration::from_secs(1),
        Some(p) => {
            let s = *p.get_ref();
            if !(0.05..=600.0).contains(&s) {
                return Err(Diagnostic::new(format!(
                    "`poll_interval` must be between 0.05 and 600 seconds, not {s}"
                ))
                .at(at(p.span()))
                .help("the seconds between two looks at the queue; 1 is a good value")
                .into());
            }
            Duration::from_secs_f64(s)
        }
    };
    let job_kinds = match &raw.kinds {
        None => DEFAULT_JOB_KINDS.iter().map(|k| (*k).to_owned()).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for k in list.get_ref() {
                if !kinds.contains(&k.get_ref().as_str()) {
                    return Err(Diagnostic::new(format!(
                        "`kinds`: no stage kind is named `{}`",
                        k.get_ref()
                    ))
                    .at(at(k.span()))
                    .help(suggest::help(k.get_ref(), kinds.iter().copied()))
                    .into());
                }
                out.push(k.get_ref().clone());
            }
            out
        }
    };
    reject_empty(&raw.sbatch_args, "sbatch_args", table_at)?;
    let config = SlurmConfig {
        partition: raw.partition,
        account: raw.account,
        time,
        time_by_kind,
        cpus: raw.cpus.map(Spanned::into_inner),
        mem,
        gpus: raw.gpus,
        sbatch_args: raw.sbatch_args,
        poll_interval,
        retries: raw.retries.unwrap_or(1),
        kinds: job_kinds,
    };
    Ok(if is_slurm {
        Executor::Slurm(Box::new(config))
    } else {
        Executor::Local
    })
}

/// A stage's `resources` table beyond `cpu` and `gpu`.
pub(crate) fn overrides(
    raw: &RawStageResources,
    at: At<'_>,
    stage_at: Location,
) -> Result<JobOverrides> {
    let time = raw
        .time
        .as_ref()
        .map(|t| time_text(t.get_ref(), t.span(), at))
        .transpose()?;
    let mem = raw.mem.as_ref().map(|m| mem_text(m, at)).transpose()?;
    if let Some(args) = &raw.sbatch_args {
        reject_empty(args, "resources.sbatch_args", stage_at)?;
    }
    Ok(JobOverrides {
        partition: raw.partition.clone(),
        account: raw.account.clone(),
        time,
        mem,
        sbatch_args: raw.sbatch_args.clone(),
        cpu: raw.cpu,
        gpu: raw.gpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        assert_eq!(time_seconds("90"), Some(Some(5400)));
        assert_eq!(time_seconds("1:30"), Some(Some(90)));
        assert_eq!(time_seconds("2:00:00"), Some(Some(7200)));
        assert_eq!(time_seconds("1-0"), Some(Some(86400)));
        assert_eq!(time_seconds("1-2:03"), Some(Some(86400 + 7200 + 180)));
        assert_eq!(time_seconds("1-2:03:04"), Some(Some(86400 + 7200 + 184)));
        assert_eq!(time_seconds("UNLIMITED"), Some(None));
        for bad in ["", "1h", "1:2:3:4", "-1", "1-", "a:b", "1-2:3:4:5"] {
            assert_eq!(time_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_stage_overrides_the_executor_and_trials_get_their_own_time() {
        let config = SlurmConfig {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            time: Some("1:00:00".into()),
            time_by_kind: BTreeMap::from([
                ("train".into(), "4:00:00".into()),
                (TRIAL.into(), "0:20:00".into()),
            ]),
            cpus: None,
            mem: Some("8G".into()),
            gpus: Some(1),
            sbatch_args: vec!["--qos=normal".into()],
            poll_interval: Duration::from_secs(1),
            retries: 1,
            kinds: vec!["train".into()],
        };
        let own = JobOverrides {
            time: Some("0:10:00".into()),
            sbatch_args: Some(vec![]),
            cpu: Some(6),
            ..Default::default()
        };
        let job = config.stage_job("train", &own, 2, 0);
        assert_eq!(
            job.sbatch_args(),
            [
                "--partition=gpu",
                "--account=lab",
                "--time=0:10:00",
                "--cpus-per-task=6",
                "--mem=8G",
                "--gres=gpu:1"
            ]
        );
        let plain = config.stage_job("evaluate", &JobOverrides::default(), 2, 0);
        assert_eq!(plain.time.as_deref(), Some("1:00:00"));
        assert_eq!(plain.cpus, 2, "the stage's threads");
        assert_eq!(plain.extra, ["--qos=normal"]);
        let trial = config.trial_job(&JobOverrides::default(), 0);
        assert_eq!(trial.time.as_deref(), Some("0:20:00"));
        assert_eq!(trial.cpus, 1);
    }
}
