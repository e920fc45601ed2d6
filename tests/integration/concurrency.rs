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
