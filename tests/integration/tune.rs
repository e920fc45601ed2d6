//! The tune stage through the real binary: tiny trials on phantoms, ASHA pruning, trials as cached
//! train runs that the final train stage reuses, and a tune killed mid-way that resumes without
//! redoing finished trials.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::test::Test;

const TUNE: &str = r#"
[[stage]]
name = "tune"
kind = "tune"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
[stage.params]
trials = 8
startup_trials = 3
pruner = { min_epochs = 1, reduction_factor = 2 }
space = { lr = { log_uniform = [1e-4, 1e-1] }, batch_size = { choice = [4, 8] } }
# Dice loss only: it lifts lesion probabilities above 0.5 within the few steps of a trial.
train = { epochs = 4, device = "cpu", loss = { bce = 0.0, dice = 1.0 }, model = { encoder = "plain", encoder_depth = 3, decoder_channels = [16, 8, 4] } }

# The best params found, on the same data: the same key as the best trial, so a cache hit.
[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params_from = "@tune.best_params"
"#;

/// Phantoms → split → augment, then tune → train.
pub const UPSTREAM: &str = r#"
[pipeline]
name = "tune-tiny"
seed = 3

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 32, size = 64 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }
params = { folds = 1, val_fraction = 0.25 }

[[stage]]
name = "augment"
kind = "augment-cache"
inputs = { images = "@split.train_images", labels = "@split.train_labels" }
# Geometric ops only: the phantoms' classes differ in intensity, which the intensity ops blur for
# the few steps a test trial gets.
params = { copies = 1, ops = { blur = { p = 0.0 }, brightness = { p = 0.0 }, clahe = { p = 0.0 }, contrast = { p = 0.0 }, elastic = { p = 0.0 }, gamma = { p = 0.0 }, noise = { p = 0.0 } } }
"#;

pub fn pipeline() -> String {
    format!("{UPSTREAM}{TUNE}")
}

fn trials(t: &Test) -> Value {
    serde_json::from_slice(&std::fs::read(t.output("tune", "trials.json")).unwrap()).unwrap()
}

fn key_of(t: &Test, stage: &str) -> String {
    let runs = t.runs();
    runs.last().unwrap()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn outcome(t: &Test, stage: &str) -> String {
    t.last_outcomes()
        .into_iter()
        .find(|(name, _)| name == stage)
        .unwrap()
        .1
}

#[test]
fn tune_prunes_weak_trials_and_the_train_stage_reuses_the_best_one() {
    let mut t = Test::new().pipeline(&pipeline()).args(["run"]);
    t.run();
    let table = trials(&t);
    let rows = table["trials"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(table["rungs"], serde_json::json!([1, 2, 4]));
    let score = |r: &Value| r["best_score"].as_f64().unwrap();
    let worst = rows.iter().map(score).fold(f64::INFINITY, f64::min);
    let best = table["best_score"].as_f64().unwrap();
    assert!(
        best > worst,
        "best {best} does not beat the worst trial {worst}"
    );
    let best_row = &rows[table["best_trial"].as_u64().unwrap() as usize];
    assert_eq!(best_row["state"], "completed");
    let pruned: Vec<&Value> = rows.iter().filter(|r| r["state"] == "pruned").collect();
    assert!(!pruned.is_empty(), "ASHA pruned nothing: {table:#}");
    for r in &pruned {
        assert!(
            r["epochs"].as_u64().unwrap() < 4,
            "a pruned trial ran all epochs: {r}"
        );
    }
    for r in rows.iter().filter(|r| r["state"] == "completed") {
        assert_eq!(r["epochs"], 4, "{r}");
    }
    for file in [
        "trials.csv",
        "best_params.json",
        "plots/trials.png",
        "plots/lr.png",
    ] {
        assert!(t.output("tune", file).is_file(), "{file}");
    }
    let csv = std::fs::read_to_string(t.output("tune", "trials.csv")).unwrap();
    assert!(
        csv.starts_with("trial,state,batch_size,lr,epochs,best_epoch,best_score,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 9);

    // The final train stage takes the best params: its key is the best trial's, which the trial
    // already published.
    assert_eq!(key_of(&t, "train"), best_row["key"].as_str().unwrap());
    assert_eq!(outcome(&t, "train"), "hit");
    let best_params: Value =
        serde_json::from_slice(&std::fs::read(t.output("tune", "best_params.json")).unwrap())
            .unwrap();
    assert_eq!(best_params["lr"], best_row["params"]["lr"]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(t.output("train", "bundle/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["lr"], best_row["params"]["lr"]);

    t.then(["run"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));

    // A tune param that does not change the result: tune reruns from cached trials, and the train
    // stage, whose params are the same, stays cached.
    let old_key = key_of(&t, "train");
    std::fs::write(
        t.path().join("pipeline.toml"),
        pipeline().replace("trials = 8", "trials = 8\nmax_minutes = 600"),
    )
    .unwrap();
    t.then(["run"]).go();
    assert_eq!(outcome(&t, "tune"), "ran");
    assert_eq!(outcome(&t, "train"), "hit");
    assert_eq!(key_of(&t, "train"), old_key);
    assert_eq!(trials(&t)["best_trial"], table["best_trial"]);

    // A search that cannot find the same lr: another best, and the train stage follows it;
    // upstream stays cached.
    let best_lr = best_row["params"]["lr"].as_f64().unwrap();
    let (lo, hi) = if best_lr > 1e-3 {
        (1e-4, 5e-4)
    } else {
        (5e-3, 3e-2)
    };
    std::fs::write(
        t.path().join("pipeline.toml"),
        pipeline().replace(
            "log_uniform = [1e-4, 1e-1]",
            &format!("log_uniform = [{lo:?}, {hi:?}]"),
        ),
    )
    .unwrap();
    t.then(["run"]).go();
    for stage in ["phantoms", "split", "augment"] {
        assert_eq!(outcome(&t, stage), "hit", "{stage}");
    }
    assert_eq!(outcome(&t, "tune"), "ran");
    let table = trials(&t);
    let new_best = &table["trials"][table["best_trial"].as_u64().unwrap() as usize];
    assert_ne!(key_of(&t, "train"), old_key);
    assert_eq!(key_of(&t, "train"), new_best["key"].as_str().unwrap());
}

fn journal(t: &Test) -> Vec<Value> {
    let work = t.cache().join("work");
    let Ok(dirs) = std::fs::read_dir(&work) else {
        return Vec::new();
    };
    for dir in dirs.flatten() {
        if let Ok(text) = std::fs::read_to_string(dir.path().join("journal.jsonl")) {
            return text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
    }
    Vec::new()
}

fn segment(e: &Value) -> (u64, u64) {
    (e["trial"].as_u64().unwrap(), e["until"].as_u64().unwrap())
}

#[test]
fn a_tune_killed_mid_trial_redoes_that_trial_and_not_the_finished_ones() {
    let mut t = Test::new()
        .pipeline(&pipeline())
        .args(["run", "--stage", "tune"]);
    // Upstream first, so the kill lands in tune.
    t.then(["run", "--stage", "augment"]).go();
    let mut child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = journal(&t);
        let results = events.iter().filter(|e| e["event"] == "result").count();
        if results >= 3 && events.last().is_some_and(|e| e["event"] == "start") {
            break;
        }
        assert!(Instant::now() < deadline, "tune never got three trials in");
        assert!(
            child.try_wait().unwrap().is_none(),
            "tune ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: the trial process it started dies with it
    child.wait().unwrap();
    let before = journal(&t);
    let finished: Vec<(u64, u64)> = before
        .iter()
        .filter(|e| e["event"] == "result")
        .map(segment)
        .collect();
    let started: Vec<(u64, u64)> = before
        .iter()
        .filter(|e| e["event"] == "start")
        .map(segment)
        .collect();
    let in_flight: Vec<(u64, u64)> = started
        .iter()
        .filter(|s| !finished.contains(s))
        .copied()
        .collect();
    assert!(!in_flight.is_empty(), "nothing was running at the kill");

    let rerun = t.then(["run", "--stage", "tune"]).go();
    assert!(
        rerun.stderr.contains("resuming the search"),
        "{}",
        rerun.stderr
    );
    // Segments the rerun ran (one log line each): all but those finished before the kill.
    let rerun_segments = rerun
        .stderr
        .lines()
        .filter(|l| l.contains(" epoch(s), best score"))
        .count() as u64;
    let after = journal(&t);
    assert!(
        after.is_empty(),
        "the journal goes with the work folder once tune is done"
    );
    let table = trials(&t);
    let rows = table["trials"].as_array().unwrap();
    // Every finished segment counted once, the killed one twice (started, killed, redone).
    let segments: u64 = rows.iter().map(|r| r["segments"].as_u64().unwrap()).sum();

    // The same search without a kill gives the same table.
    let mut clean = Test::new()
        .pipeline(&pipeline())
        .args(["run", "--stage", "tune"]);
    clean.run();
    let expected = trials(&clean);
    let strip = |table: &Value| -> Vec<(Value, Value, Value, Value)> {
        table["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["params"].clone(),
                    r["state"].clone(),
                    r["scores"].clone(),
                    r["key"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(&table),
        strip(&expected),
        "the resumed search differs from a clean one"
    );
    let clean_segments: u64 = expected["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["segments"].as_u64().unwrap())
        .sum();
    assert_eq!(
        segments, clean_segments,
        "segments: a finished one was run again, or the killed one was not"
    );
    assert_eq!(
        rerun_segments,
        clean_segments - finished.len() as u64,
        "the rerun ran a segment finished before the kill, or skipped the killed one ({in_flight:?})"
    );
}

#[test]
fn a_searched_path_the_train_params_lack_is_a_config_error() {
    let pipeline = pipeline().replace(
        "batch_size = { choice = [4, 8] }",
        "\"model.depth\" = { choice = [3, 4] }",
    );
    let mut t = Test::new().pipeline(&pipeline).args(["run"]).status(2);
    let done = t.run();
    assert!(
        done.stderr.contains("model.depth") && done.stderr.contains("encoder_depth"),
        "{}",
        done.stderr
    );
    assert!(t.objects().is_empty(), "nothing ran");
}

/// Two trials at once, each its own process: the search still completes every trial, and the
/// train stage still finds the best one in the cache.
#[test]
fn parallel_trials_run_side_by_side() {
    let pipeline = pipeline()
        .replace("trials = 8", "trials = 4\nparallel = 2")
        .replace("startup_trials = 3", "startup_trials = 2");
    let mut t = Test::new().pipeline(&pipeline).args(["run"]);
    t.run();
    let table = trials(&t);
    let rows = table["trials"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    // Segments of different trials overlapped in time, as the trial processes measured them.
    let spans: Vec<(u64, u64, u64)> = rows
        .iter()
        .flat_map(|r| {
            let trial = r["trial"].as_u64().unwrap();
            r["ran_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |s| (trial, s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        })
        .collect();
    let overlapping = spans
        .iter()
        .any(|a| spans.iter().any(|b| a.0 != b.0 && a.1 < b.2 && b.1 < a.2));
    assert!(overlapping, "no two trials ran at the same time: {spans:?}");
    assert!(
        rows.iter()
            .all(|r| r["state"] == "completed" || r["state"] == "pruned"),
        "{table:#}"
    );
    let best = &rows[table["best_trial"].as_u64().unwrap() as usize];
    assert_eq!(key_of(&t, "train"), best["key"].as_str().unwrap());
    assert_eq!(outcome(&t, "train"), "hit");
}

/// The command lines of the processes working in folder `dir`.
fn processes_in(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == dir))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// covseg is killed after forking a trial but before the trial set its parent-death signal: the
/// trial must notice that its parent is gone and not start (it would run on, holding its key's
/// lock, with nobody to read its report).
#[test]
fn a_trial_whose_parent_died_before_it_started_does_not_run() {
    let mut t = Test::new()
        .pipeline(&pipeline())
        .args(["run", "--stage", "augment"]);
    t.run();
    let mut child = t
        .command(&["run".into(), "--stage".into(), "tune".into()])
        .env("COVSEG_TEST_TRIAL_FORK_DELAY_MS", "1500")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !journal(&t).iter().any(|e| e["event"] == "start") {
        assert!(Instant::now() < deadline, "tune never started a trial");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Inside the child's delay: forked, its death signal not set yet.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // Until well after the delay ends, no `covseg trial` may come to life.
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        let left: Vec<String> = processes_in(t.path())
            .into_iter()
            .filter(|c| c.contains(" trial "))
            .collect();
        assert!(left.is_empty(), "an orphaned trial process runs: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
