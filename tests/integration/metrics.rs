//! `covseg metrics`: evaluate's metrics across runs, with the param that changed between them.

use crate::test::Test;
use crate::train::PIPELINE;

fn with_evaluate(params: &str) -> String {
    format!(
        r#"{PIPELINE}
[[stage]]
name = "evaluate"
kind = "evaluate"
inputs = {{ bundle = "@train.bundle", val_images = "@split.val_images", val_labels = "@split.val_labels" }}
params = {{ device = "cpu"{params} }}
"#
    )
}

/// The text table without what varies between runs: the legend (times, ids) and timings.
fn table(text: &str) -> String {
    let body = text.split_once("\n\n").map_or(text, |(_, rest)| rest);
    body.lines()
        .map(|l| {
            if l.starts_with("evaluate.seconds_per_slice") {
                "evaluate.seconds_per_slice [t] [t]"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn metrics_compare_two_runs_and_name_the_param_that_changed() {
    let mut t = Test::new().pipeline(&with_evaluate("")).args(["run"]);
    t.run();
    let none = t.then(["metrics"]).go();
    assert!(none.stdout.contains("evaluate.score"), "{}", none.stdout);
    assert!(
        none.stdout.contains("evaluate.classes.ggo.f1"),
        "{}",
        none.stdout
    );
    // One run, one column, and no params to compare yet.
    assert!(
        !none.stdout.contains("params that differ"),
        "{}",
        none.stdout
    );

    // A no-op rerun adds no column: its results are the same entries.
    t.then(["run"]).go();
    std::fs::write(
        t.path().join("pipeline.toml"),
        with_evaluate(", sweep_step = 0.25"),
    )
    .unwrap();
    t.then(["run"]).go();
    let text = t.then(["metrics"]).go().stdout;
    assert_eq!(text.matches(" UTC ").count(), 2, "{text}");
    let params = text.split("params that differ\n").nth(1).expect(&text);
    let rows: Vec<&str> = params.lines().collect();
    assert_eq!(rows.len(), 1, "only the changed param: {params}");
    assert!(rows[0].starts_with("evaluate.sweep_step"), "{}", rows[0]);
    let cells: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(&cells[1..], ["0.25", "0.05"], "newest first");
    insta::assert_snapshot!("metrics_two_runs", table(&text));

    let json: serde_json::Value =
        serde_json::from_str(&t.then(["metrics", "--json"]).go().stdout).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        json["differing_params"],
        serde_json::json!(["evaluate.sweep_step"])
    );
    assert_eq!(runs[0]["params"]["evaluate.sweep_step"], "0.25");
    for run in runs {
        let score = run["metrics"]["evaluate.score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("evaluate", "metrics.json")).unwrap())
            .unwrap();
    assert_eq!(runs[0]["metrics"]["evaluate.score"], metrics["score"]);

    let md = t.then(["metrics", "--md", "--runs", "1"]).go().stdout;
    assert!(md.contains("| metric | A |\n|---|---|\n"), "{md}");
    assert!(md.contains("| `evaluate.score` | "), "{md}");

    let plot = t.path().join("scores.png");
    t.then(["metrics", "--plot", plot.to_str().unwrap()]).go();
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 5_000, "a drawn chart, not an empty image");
}

#[test]
fn metrics_without_any_evaluated_run_say_what_to_do() {
    let mut t = Test::new()
        .pipeline(crate::test::pipeline("folds = 2").as_str())
        .args(["run"]);
    t.run();
    let out = t.then(["metrics"]).expect(2).go();
    assert!(
        out.stderr.contains("has metrics in the cache"),
        "{}",
        out.stderr
    );
}
