//! Slurm's view of a job: its id (a plain job, or one task of an array), its state, and the
//! parsing of `scontrol show job -o` and `sacct -P` lines. Plain text formats only: they are the
//! same from Slurm 22.05 to 24.x, where the JSON schemas are not.

use std::collections::BTreeMap;
use std::fmt;

/// A job as covseg names it: `42`, or task 3 of array 41: `41_3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    pub job: u64,
    pub task: Option<u64>,
}

impl JobId {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        match text.split_once('_') {
            Some((job, task)) => Some(Self {
                job: job.parse().ok()?,
                task: Some(task.parse().ok()?),
            }),
            None => Some(Self {
                job: text.parse().ok()?,
                task: None,
            }),
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.task {
            Some(task) => write!(f, "{}_{task}", self.job),
            None => write!(f, "{}", self.job),
        }
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not a job id: {text}")))
    }
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, `TIMEOUT`, … (the first word of
    /// `JobState`; `CANCELLED by 0` is `CANCELLED`).
    pub state: String,
    pub reason: String,
    /// `ExitCode=status:signal`, as written.
    pub exit_code: String,
}

/// How a job's state counts for covseg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting or running: look again later.
    Active,
    /// Ended normally (the work's own report says whether the work succeeded).
    Completed,
    /// Ended by the cluster: worth submitting again (node failure, preemption, a cancel by
    /// someone else, a requeue that gave up).
    Lost,
    /// Ended for a reason a resubmission would meet again (failed, time limit, out of memory).
    Failed,
    /// Pending on a request the cluster can never meet.
    Impossible,
}

/// Pending reasons that never clear by waiting.
const IMPOSSIBLE: &[&str] = &[
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "AccountNotAllowed",
    "QOSNotAllowed",
    "InvalidAccount",
    "InvalidQOS",
    "BadConstraints",
    "JobHeldAdmin",
];

impl JobStatus {
    pub fn phase(&self) -> Phase {
        match self.state.as_str() {
            "COMPLETED" => Phase::Completed,
            "CANCELLED" | "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL" | "REVOKED" => Phase::Lost,
            "FAILED" | "TIMEOUT" | "OUT_OF_MEMORY" | "DEADLINE" | "SPECIAL_EXIT" => Phase::Failed,
            "PENDING" if IMPOSSIBLE.contains(&self.reason.as_str()) => Phase::Impossible,
            _ => Phase::Active,
        }
    }

    /// Why a job that ended without its work's report ended, in words.
    pub fn explain(&self) -> String {
        let what = match self.state.as_str() {
            "TIMEOUT" => {
                "hit its time limit (TIMEOUT); raise `time` for it under [executor] or the stage's resources"
            }
            "CANCELLED" => "was cancelled (CANCELLED)",
            "NODE_FAIL" => "was lost with its node (NODE_FAIL)",
            "PREEMPTED" => "was preempted (PREEMPTED)",
            "BOOT_FAIL" => "could not start its node (BOOT_FAIL)",
            "OUT_OF_MEMORY" => "ran out of memory (OUT_OF_MEMORY); raise `mem`",
            "FAILED" => "failed (FAILED)",
            "DEADLINE" => "missed its deadline (DEADLINE)",
            "PENDING" => "can never start",
            other => {
                return format!(
                    "ended {other} (exit {}, reason {})",
                    self.exit_code, self.reason
                );
            }
        };
        let mut text = what.to_owned();
        if self.reason != "None" && !self.reason.is_empty() {
            text.push_str(&format!(", reason {}", self.reason));
        }
        if !self.exit_code.is_empty() && self.state != "PENDING" {
            text.push_str(&format!(", exit {}", self.exit_code));
        }
        text
    }
}

/// `key=value` fields of one `-o` line. A value runs to the next ` Key=`, so values with spaces
/// (`Reason=launch failed requeued held`) stay whole.
fn fields(line: &str) -> BTreeMap<&str, String> {
    let mut out: BTreeMap<&str, String> = BTreeMap::new();
    let mut current: Option<&str> = None;
    for token in line.split(' ').filter(|t| !t.is_empty()) {
        let starts_field = token.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/:_".contains(&b))
        });
        if starts_field {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            out.insert(k, v.to_owned());
            current = Some(k);
        } else if let Some(k) = current
            && let Some(v) = out.get_mut(k)
        {
            v.push(' ');
            v.push_str(token);
        }
    }
    out
}

/// Task ids of an `ArrayTaskId` field: `3`, or for the tasks still pending together `0-3`,
/// `1,3,5-7` or `0-9%2`.
fn task_ids(text: &str) -> Vec<u64> {
    let text = text.split('%').next().unwrap_or("");
    let mut ids = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>())
                    && b >= a
                    && b - a < 1_000_000
                {
                    ids.extend(a..=b);
                }
            }
            None => {
                if let Ok(id) = part.parse() {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// Every job (and array task) in the output of `scontrol show job -o`.
pub fn parse_scontrol(text: &str) -> BTreeMap<JobId, JobStatus> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f = fields(line);
        let Some(state) = f.get("JobState") else {
            continue;
        };
        let status = JobStatus {
            state: state.split(' ').next().unwrap_or("").to_owned(),
            reason: f.get("Reason").cloned().unwrap_or_default(),
            exit_code: f.get("ExitCode").cloned().unwrap_or_default(),
        };
        match (f.get("ArrayJobId"), f.get("ArrayTaskId")) {
            (Some(array), Some(tasks)) => {
                let Ok(array) = array.parse::<u64>() else {
                    continue;
                };
                for task in task_ids(tasks) {
                    out.insert(
                        JobId {
                            job: array,
                            task: Some(task),
                        },
                        status.clone(),
                    );
                }
            }
            _ => {
                if let Some(id) = f.get("JobId").and_then(|j| j.parse().ok()) {
                    out.insert(
                        JobId {
                            job: id,
                            task: None,
                        },
                        status,
                    );
                }
            }
        }
    }
    out
}

/// `sacct -n -P -X -o JobID,State,ExitCode,Reason` lines, where accounting exists.
pub fn parse_sacct(text: &str) -> BTreeMap<JobId, JobStatus> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let [id, state, exit, rest @ ..] = cols.as_slice() else {
            continue;
        };
        // A pending array's row is `41_[0-3]`.
        let (base, tasks) = match id.split_once("_[") {
            Some((base, tasks)) => (base, Some(tasks.trim_end_matches(']'))),
            None => (*id, None),
        };
        let status = JobStatus {
            state: state.split(' ').next().unwrap_or("").to_owned(),
            reason: rest.first().map(|r| r.to_string()).unwrap_or_default(),
            exit_code: (*exit).to_owned(),
        };
        match tasks {
            Some(tasks) => {
                let Ok(job) = base.parse() else { continue };
                for task in task_ids(tasks) {
                    out.insert(
                        JobId {
                            job,
                            task: Some(task),
                        },
                        status.clone(),
                    );
                }
            }
            None => {
                if let Some(id) = JobId::parse(base) {
                    out.insert(id, status);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARRAY: &str = "JobId=21 ArrayJobId=20 ArrayTaskId=0 JobName=wrap UserId=root(0) JobState=COMPLETED Reason=None Dependency=(null) ExitCode=0:0 RunTime=00:00:01 Command=/tmp/a b.sh
JobId=22 ArrayJobId=20 ArrayTaskId=1 JobName=wrap JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0
JobId=20 ArrayJobId=20 ArrayTaskId=5-7%2 JobName=wrap JobState=PENDING Reason=launch failed requeued held ExitCode=0:0
JobId=30 JobName=single JobState=CANCELLED by 0 Reason=None ExitCode=0:15
";

    #[test]
    fn scontrol_lines_become_one_status_per_task() {
        let jobs = parse_scontrol(ARRAY);
        let task = |t| JobId {
            job: 20,
            task: Some(t),
        };
        assert_eq!(jobs[&task(0)].phase(), Phase::Completed);
        assert_eq!(jobs[&task(1)].state, "FAILED");
        assert_eq!(jobs[&task(1)].phase(), Phase::Failed);
        for t in 5..=7 {
            assert_eq!(jobs[&task(t)].reason, "launch failed requeued held");
            assert_eq!(jobs[&task(t)].phase(), Phase::Active);
        }
        let single = &jobs[&JobId {
            job: 30,
            task: None,
        }];
        assert_eq!(single.state, "CANCELLED");
        assert_eq!(single.exit_code, "0:15");
        assert_eq!(single.phase(), Phase::Lost);
        assert_eq!(jobs.len(), 6);
    }

    #[test]
    fn requests_the_cluster_cannot_meet_are_final() {
        let status = JobStatus {
            state: "PENDING".into(),
            reason: "PartitionConfig".into(),
            exit_code: "0:0".into(),
        };
        assert_eq!(status.phase(), Phase::Impossible);
        let waiting = JobStatus {
            reason: "Resources".into(),
            ..status
        };
        assert_eq!(waiting.phase(), Phase::Active);
    }

    #[test]
    fn timeouts_say_what_to_raise() {
        let status = JobStatus {
            state: "TIMEOUT".into(),
            reason: "TimeLimit".into(),
            exit_code: "0:15".into(),
        };
        let text = status.explain();
        assert!(
            text.contains("time limit") && text.contains("TimeLimit"),
            "{text}"
        );
    }

    #[test]
    fn ids_round_trip_and_sacct_rows_parse() {
        for text in ["42", "41_3"] {
            assert_eq!(JobId::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(JobId::parse("x"), None);
        let jobs = parse_sacct(
            "41_0|COMPLETED|0:0|None\n41_[1-2]|PENDING|0:0|Priority\n50|TIMEOUT|0:15|TimeLimit\n",
        );
        assert_eq!(jobs.len(), 4);
        assert_eq!(
            jobs[&JobId {
                job: 50,
                task: None
            }]
                .phase(),
            Phase::Failed
        );
        assert_eq!(
            jobs[&JobId {
                job: 41,
                task: Some(2)
            }]
                .reason,
            "Priority"
        );
    }
}
