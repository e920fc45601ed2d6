//! Two `covseg run` processes on one cache: each result is built once, the other process waits
//! and reuses it, and the cache verifies clean.

use crate::test::{Test, pipeline};

#[test]
fn two_concurrent_runs_build_each_entry_once() {
    let toml = pipeline("folds = 2").replace("slices = 6, size = 64", "slices = 120, size = 128");
    let mut t = Test::new().pipeline(&toml).args(["run"]);
    let a = t.command(&["run".to_owned()]).spawn().unwrap();
    let b = t.command(&["run".to_owned()]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let runs = t.runs();
    assert_eq!(runs.len(), 2);
    for stage in ["phantoms", "holdout", "split"] {
        let outcomes: Vec<&str> = runs
            .iter()
            .flat_map(|r| r["stages"].as_array().unwrap())
            .filter(|s| s["name"] == stage)
            .map(|s| s["outcome"].as_str().unwrap())
            .collect();
        let mut sorted = outcomes.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            ["hit", "ran"],
            "{stage} is built by one process and reused by the other"
        );
    }
    assert_eq!(t.objects().len(), 3);
    t.then(["cache", "verify"]).go();
}

/// What two copies of one Slurm job (a requeued job whose first copy still runs on a lost node)
/// do to the cache: `covseg stage` twice at once on the same stage. The key's lock lets one
/// build; the other waits and finds the entry.
#[test]
fn two_stage_processes_on_one_cache_build_the_entry_once() {
    let toml = crate::tune::UPSTREAM.to_owned()
        + r#"
[[stage]]
name = "train"
kind = "train"
inputs = { shards = "@augment.shards", val_images = "@split.val_images", val_labels = "@split.val_labels", preprocessing = "@split.preprocessing" }
params = { epochs = 3, device = "cpu", model = { encoder = "plain", encoder_depth = 3, decoder_channels = [16, 8, 4] } }
"#;
    let mut t = Test::new()
        .pipeline(&toml)
        .args(["run", "--stage", "augment"]);
    t.run();
    let stage = || {
        t.command(&["stage".into(), "train".into()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (stage(), stage());
    let outputs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut said: Vec<String> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let line = String::from_utf8_lossy(&o.stdout).into_owned();
            line.split_whitespace().nth(1).unwrap().to_owned()
        })
        .collect();
    said.sort();
    assert_eq!(said, ["cached", "ran"]);
    t.then(["cache", "verify"]).go();
    // The submitting run finds it.
    t.then(["run"]).go();
    let train = t
        .last_outcomes()
        .into_iter()
        .find(|(n, _)| n == "train")
        .unwrap();
    assert_eq!(train.1, "hit");
}

#[test]
fn a_stage_whose_upstream_is_not_cached_says_which_to_run() {
    let toml = crate::tune::UPSTREAM;
    let mut t = Test::new()
        .pipeline(toml)
        .args(["stage", "augment"])
        .status(2);
    let out = t.run();
    assert!(
        out.stderr
            .contains("needs `phantoms`, which is not in the cache")
            && out.stderr.contains("covseg run --stage phantoms"),
        "{}",
        out.stderr
    );
    let mut stale = Test::new()
        .pipeline(toml)
        .args(["stage", "phantoms", "--key", "00"])
        .status(2);
    let out = stale.run();
    assert!(
        out.stderr.contains("not the 00 it was sent for"),
        "{}",
        out.stderr
    );
}
