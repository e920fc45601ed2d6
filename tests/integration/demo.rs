//! The README's main command: the demo pipeline runs end to end, and a second run is all hits.

use crate::test::{Test, redact};

#[test]
fn demo_pipeline_runs_then_is_all_cached() {
    let demo = include_str!("../../examples/demo.toml");
    let mut t = Test::new().file("examples/demo.toml", demo).args([
        "run",
        "--pipeline",
        "examples/demo.toml",
    ]);
    t.run();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "ran"));
    let preview = std::fs::read(t.output("augment", "preview.png")).unwrap();
    assert_eq!(&preview[1..4], b"PNG");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("augment", "shards/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["copies"], 4);
    assert_eq!(
        index["slices"].as_u64().unwrap() * 4,
        index["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["items"].as_u64().unwrap())
            .sum::<u64>()
    );
    let csv = std::fs::read_to_string(t.output("submission", "submission/submission.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5_242_880);
    assert!(csv.starts_with("Id,Predicted\n0,"));
    assert!(t.output("evaluate", "report/report.html").is_file());
    t.then(["run", "--pipeline", "examples/demo.toml"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));
    // One evaluate param: evaluate and what follows rerun (or are found, if their inputs came out
    // the same), nothing before it.
    let changed = demo.replace(
        "params = { device = \"cpu\" }\n\n[[stage]]\nname = \"predict\"",
        "params = { device = \"cpu\", sweep_step = 0.1 }\n\n[[stage]]\nname = \"predict\"",
    );
    assert_ne!(changed, demo);
    std::fs::write(t.path().join("examples/demo.toml"), &changed).unwrap();
    t.then(["run", "--pipeline", "examples/demo.toml"]).go();
    for (stage, outcome) in t.last_outcomes() {
        match stage.as_str() {
            "evaluate" => assert_eq!(outcome, "ran"),
            "predict" | "submission" => {}
            _ => assert_eq!(outcome, "hit", "{stage}"),
        }
    }
    std::fs::write(t.path().join("examples/demo.toml"), demo).unwrap();
    let plan = t.then(["plan", "--pipeline", "examples/demo.toml"]).go();
    insta::assert_snapshot!("demo_plan", redact(&plan.stdout));
}

/// The real pipeline without its data: every stage that needs the Kaggle files says which one is
/// missing, and `run` stops with the hint that says where to get them.
#[test]
fn kaggle_pipeline_plan_and_run_without_data() {
    let pipeline = include_str!("../../pipeline.toml");
    let mut t = Test::new().pipeline(pipeline).args(["plan"]);
    let plan = t.run();
    insta::assert_snapshot!("kaggle_plan_without_data", redact(&plan.stdout));
    let run = t.then(["run"]).expect(2).go();
    assert!(
        run.stderr
            .contains("kaggle competitions download -c covid-segmentation"),
        "{}",
        run.stderr
    );
}
