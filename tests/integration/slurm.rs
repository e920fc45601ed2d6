//! The Slurm executor against a real one-node Slurm (`tests/slurm/start.sh`; `.ci/run` starts
//! one and exports `SLURM_CONF`). Skipped, saying so, where no cluster can be started.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::test::Test;

/// `SLURM_CONF` of a cluster that answers, starting one when none is named.
fn cluster() -> Option<&'static PathBuf> {
    static CONF: OnceLock<Option<PathBuf>> = OnceLock::new();
    CONF.get_or_init(|| {
        let up = |conf: &PathBuf| {
            Command::new("scontrol")
                .arg("ping")
                .env("SLURM_CONF", conf)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"))
        };
        if let Some(conf) = std::env::var_os("SLURM_CONF").map(PathBuf::from)
            && up(&conf)
        {
            return Some(conf);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slurm/start.sh");
        let out = Command::new(script).output();
        let conf = out.ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .strip_prefix("export SLURM_CONF=")
                .map(PathBuf::from)
        });
        match conf {
            Some(conf) if up(&conf) => Some(conf),
            _ => {
                eprintln!(
                    "skipping the Slurm tests: no Slurm cluster answers and tests/slurm/start.sh could not start one (it needs root and Debian's slurmctld, slurmd and munge packages)"
                );
                None
            }
        }
    })
    .as_ref()
}

fn on_slurm(toml: &str) -> Option<Test> {
    let conf = cluster()?;
    Some(Test::new().pipeline(toml).env("SLURM_CONF", conf))
}

fn slurm(args: &[&str]) -> String {
    let conf = cluster().expect("a cluster");
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This test's jobs still queued or running: (id, state), by their working folder.
fn jobs_of(t: &Test) -> Vec<(String, String)> {
    let dir = t.path().canonicalize().unwrap();
    slurm(&["squeue", "-h", "-o", "%i|%T|%Z"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let (id, state, wd) = (f.next()?, f.next()?, f.next()?);
            (PathBuf::from(wd).canonicalize().ok()? == dir)
                .then(|| (id.to_owned(), state.to_owned()))
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const EXECUTOR: &str = "\n[executor]\nkind = \"slurm\"\npoll_interval = 0.2\ncpus = 1\n";

/// The tune test pipeline with the executor table and `extra` tune params.
fn tune_pipeline(executor: &str, tune_params: &str) -> String {
    let base = crate::tune::pipeline();
    let base = base.replace("trials = 8", &format!("trials = 4\n{tune_params}"));
    // Before the first stage table, so it is a top-level table.
    base.replacen("\n[[stage]]", &format!("{executor}\n[[stage]]"), 1)
}

fn trials(t: &Test) -> Value {
    serde_json::from_slice(&std::fs::read(t.output("tune", "trials.json")).unwrap()).unwrap()
}

fn table_rows(table: &Value) -> Vec<(Value, Value, Value)> {
    table["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["params"].clone(), r["state"].clone(), r["scores"].clone()))
        .collect()
}

/// The demo pipeline up to its tune stage, one CPU per trial (so both executors do the same
/// arithmetic), with an `[executor]` table.
fn demo_tune(executor: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml"))
        .unwrap();
    let mut parts = text.split("\n[[stage]]");
    // Each test's own cache and outputs, not the repository's.
    let mut out: String = parts
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("cache =") && !l.starts_with("outputs ="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push('\n');
    out.push_str(executor);
    for stage in parts {
        let is_tune = stage.contains("\nname = \"tune\"\n");
        let stage = if is_tune {
            stage.replacen(
                "kind = \"tune\"\n",
                "kind = \"tune\"\nresources = { cpu = 1 }\n",
                1,
            )
        } else {
            stage.to_owned()
        };
        out.push_str("\n[[stage]]");
        out.push_str(&stage);
        if is_tune {
            break;
        }
    }
    out
}

#[test]
fn the_demos_tune_stage_on_slurm_gives_the_local_executors_trials_table() {
    let Some(mut remote) = on_slurm(&demo_tune(EXECUTOR)) else {
        return;
    };
    let toml = demo_tune("");
    assert!(
        !toml.contains("parallel"),
        "the demo tunes one trial at a time"
    );
    let mut local = Test::new().pipeline(&toml).args(["run", "--stage", "tune"]);
    local.run();
    let done = remote.then(["run", "--stage", "tune"]).go();
    assert!(
        done.stderr.contains("is slurm job"),
        "no trial went to Slurm:\n{}",
        done.stderr
    );
    assert!(done.stderr.contains("COMPLETED"), "{}", done.stderr);
    assert_eq!(
        table_rows(&trials(&remote)),
        table_rows(&trials(&local)),
        "Slurm and the local executor disagree"
    );
    let keys = |t: &Test| -> Vec<Value> {
        trials(t)["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].clone())
            .collect()
    };
    assert_eq!(keys(&remote), keys(&local), "the executor entered a key");
    let plan = remote.then(["plan"]).go();
    assert!(plan.stdout.contains("executor slurm"), "{}", plan.stdout);
    let explain = remote.then(["explain", "tune"]).go();
    assert!(
        explain
            .stdout
            .contains("runs: here, its trials as slurm jobs: time (default), 1 cpu"),
        "{}",
        explain.stdout
    );
}

/// Heavier trials than the tune tests', so that a job is caught running.
fn slow_tune(tune_params: &str) -> String {
    tune_pipeline(EXECUTOR, tune_params)
        .replace("slices = 32, size = 64", "slices = 48, size = 96")
        .replace("epochs = 4,", "epochs = 12,")
}

/// One trial in one segment of 12 epochs: long enough to be caught running.
fn one_long_trial() -> String {
    slow_tune("parallel = 1")
        .replace("trials = 4", "trials = 1")
        .replace("min_epochs = 1,", "min_epochs = 12,")
}

#[test]
fn a_cancelled_trial_job_is_retried_and_the_reason_is_in_the_table() {
    let toml = one_long_trial();
    let Some(mut t) = on_slurm(&toml) else {
        return;
    };
    t.then(["run", "--stage", "augment"]).go();
    let child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut cancelled = String::new();
    wait_for("a running trial job", Duration::from_secs(120), || {
        if let Some((id, _)) = jobs_of(&t).into_iter().find(|(_, s)| s == "RUNNING") {
            slurm(&["scancel", &id]);
            cancelled = id;
            return true;
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let table = trials(&t);
    let row = &table["trials"][0];
    let retries = row["retries"].as_array().expect("a retry recorded");
    assert_eq!(retries.len(), 1, "{row}");
    let reason = retries[0].as_str().unwrap();
    assert!(
        reason.contains(&cancelled) && reason.contains("CANCELLED"),
        "{reason}"
    );
    assert_eq!(row["state"], "completed", "the retry finished the trial");
    assert_eq!(row["epochs"], 12);
    let csv = std::fs::read_to_string(t.output("tune", "trials.csv")).unwrap();
    assert!(csv.contains("CANCELLED"), "{csv}");
}

#[test]
fn a_stage_job_past_its_time_limit_is_reported_as_such() {
    // Minutes are Slurm's unit: a one-minute limit is enforced about a minute later.
    let toml = crate::tune::UPSTREAM.to_owned()
        + EXECUTOR
        + r#"
[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 100000, early_stopping_patience = 100000, device = "cpu", model = { encoder = "plain", encoder_depth = 3, decoder_channels = [16, 8, 4] } }
resources = { time = "1" }
"#;
    let Some(mut t) = on_slurm(&toml) else {
        return;
    };
    let done = t.then(["run"]).expect(1).go();
    assert!(
        done.stderr.contains("hit its time limit (TIMEOUT)"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.contains("failed"), "{}", done.stdout);
    assert!(jobs_of(&t).is_empty());
}

fn submitted_segments(stderr: &str) -> Vec<(String, String)> {
    // "trial 2: segment to epoch 4 is slurm job 41_2"
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("trial ")? + 6..];
            let (trial, rest) = rest.split_once(": segment to epoch ")?;
            let (until, _) = rest.split_once(" is slurm job ")?;
            Some((trial.to_owned(), until.trim().to_owned()))
        })
        .collect()
}

#[test]
fn a_coordinator_killed_and_run_again_adopts_its_running_jobs() {
    let Some(mut t) = on_slurm(&slow_tune("parallel = 2")) else {
        return;
    };
    t.then(["run", "--stage", "augment"]).go();
    let mut child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a running trial job", Duration::from_secs(120), || {
        jobs_of(&t).iter().any(|(_, s)| s == "RUNNING")
    });
    child.kill().unwrap(); // SIGKILL: nothing can cancel the jobs
    let first = child.wait_with_output().unwrap();
    let first = String::from_utf8_lossy(&first.stderr).into_owned();
    let left = jobs_of(&t);
    assert!(!left.is_empty(), "the jobs died with the coordinator");
    let rerun = t.then(["run", "--stage", "tune"]).go();
    assert!(
        rerun.stderr.contains("adopting slurm job"),
        "{}",
        rerun.stderr
    );
    let mut sent = submitted_segments(&first);
    sent.extend(submitted_segments(&rerun.stderr));
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        sent.len(),
        unique.len(),
        "a segment was submitted twice: {sent:?}"
    );
    let table = trials(&t);
    for row in table["trials"].as_array().unwrap() {
        assert!(row["retries"].is_null(), "{row}");
        assert_ne!(row["state"], "failed", "{row}");
    }
}

#[test]
fn sigterm_of_the_coordinator_cancels_its_jobs() {
    let Some(mut t) = on_slurm(&slow_tune("parallel = 2")) else {
        return;
    };
    t.then(["run", "--stage", "augment"]).go();
    let child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("trial jobs", Duration::from_secs(120), || {
        !jobs_of(&t).is_empty()
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("cancelling Slurm job(s)"), "{stderr}");
    wait_for("the jobs to go", Duration::from_secs(30), || {
        jobs_of(&t).is_empty()
    });
}

#[test]
fn a_train_stage_runs_as_a_job_and_the_next_run_finds_it_cached() {
    let train = r#"
[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 2, device = "cpu", model = { encoder = "plain", encoder_depth = 3, decoder_channels = [16, 8, 4] } }
"#;
    let toml = crate::tune::UPSTREAM.to_owned() + EXECUTOR + train;
    let Some(mut t) = on_slurm(&toml) else {
        return;
    };
    let plan = t.then(["plan"]).go();
    assert!(
        plan.stdout.contains("→ slurm job: time (default), 1 cpu"),
        "{}",
        plan.stdout
    );
    let first = t.then(["run"]).go();
    assert!(first.stderr.contains("submitted"), "{}", first.stderr);
    assert!(first.stderr.contains("COMPLETED"), "{}", first.stderr);
    let outcome = |t: &Test| {
        t.last_outcomes()
            .into_iter()
            .find(|(n, _)| n == "train")
            .unwrap()
            .1
    };
    assert_eq!(outcome(&t), "ran");
    let log = std::fs::read_dir(t.cache().join("jobs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .expect("the job's log is in the cache");
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(log.contains("building in this process"), "{log}");
    t.then(["run"]).go();
    assert_eq!(outcome(&t), "hit");
    // The executor is not part of the key: the local executor finds the same entry.
    std::fs::write(
        t.path().join("pipeline.toml"),
        toml.replace("kind = \"slurm\"", "kind = \"local\""),
    )
    .unwrap();
    t.then(["run"]).go();
    assert_eq!(outcome(&t), "hit");
    let explain = t.then(["explain", "train"]).go();
    assert!(
        !explain.stdout.contains("runs: slurm"),
        "{}",
        explain.stdout
    );
}

#[test]
fn a_requeued_trial_job_goes_on_from_its_checkpoint_and_scores_as_if_never_stopped() {
    let toml = one_long_trial();
    let Some(mut t) = on_slurm(&toml) else {
        return;
    };
    t.then(["run", "--stage", "augment"]).go();
    let child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Requeue once the trial has a checkpoint: Slurm kills the running job and runs it again.
    let mut requeued = String::new();
    wait_for(
        "a running trial with a checkpoint",
        Duration::from_secs(120),
        || {
            let Some((id, _)) = jobs_of(&t).into_iter().find(|(_, s)| s == "RUNNING") else {
                return false;
            };
            let has_checkpoint = walk(&t.cache().join("work"))
                .iter()
                .any(|p| p.to_string_lossy().contains("checkpoint"));
            if has_checkpoint {
                slurm(&["scontrol", "requeue", &id]);
                requeued = id;
            }
            has_checkpoint
        },
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let restarts = slurm(&["scontrol", "show", "job", "-o", &requeued]);
    assert!(restarts.contains("Restarts=1"), "not requeued: {restarts}");
    // The same trial run straight through, locally.
    let mut clean = Test::new()
        .pipeline(
            &toml
                .replace("kind = \"slurm\"", "kind = \"local\"")
                .replace(
                    "kind = \"tune\"\n",
                    "kind = \"tune\"\nresources = { cpu = 1 }\n",
                ),
        )
        .args(["run", "--stage", "tune"]);
    clean.run();
    assert_eq!(table_rows(&trials(&t)), table_rows(&trials(&clean)));
    t.then(["cache", "verify"]).go();
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
