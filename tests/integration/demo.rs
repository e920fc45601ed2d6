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
    for (stage, outcome) in t.last_outcomes() {
        // The train stage takes tune's best params: the best trial already ran it.
        let expected = if stage == "train" { "hit" } else { "ran" };
        assert_eq!(outcome, expected, "{stage}");
    }
    let trials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("tune", "trials.json")).unwrap()).unwrap();
    assert_eq!(trials["trials"].as_array().unwrap().len(), 4);
    // The models work: the best trial on validation, and the final model (train + validation) on
    // phantoms no stage trained on, each scored by an evaluate stage after its threshold sweep.
    assert!(trials["best_score"].as_f64().unwrap() >= 0.8, "{trials}");
    for stage in ["evaluate", "evaluate-final"] {
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(t.output(stage, "metrics.json")).unwrap())
                .unwrap();
        let score = metrics["score"].as_f64().unwrap();
        assert!(score >= 0.8, "{stage}: validation mean F1 {score} < 0.8");
    }
    // The final model trained on train + validation, for the recipe's epochs.
    let recipe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("train", "recipe.json")).unwrap()).unwrap();
    let final_epochs = std::fs::read_to_string(t.output("train-final", "metrics.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(Some(final_epochs as u64), recipe["epochs"].as_u64());
    let all: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.output("augment-all", "shards/index.json")).unwrap(),
    )
    .unwrap();
    assert!(all["slices"].as_u64() > index_slices(&t));
    let preview = std::fs::read(t.output("augment", "preview.png")).unwrap();
    assert_eq!(&preview[1..4], b"PNG");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("augment", "shards/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["copies"], 1);
    assert_eq!(
        index["slices"].as_u64().unwrap(),
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
        "curve = \"@train.curve\" }\nparams = { device = \"cpu\" }",
        "curve = \"@train.curve\" }\nparams = { device = \"cpu\", sweep_step = 0.1 }",
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

fn index_slices(t: &Test) -> Option<u64> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.output("augment", "shards/index.json")).unwrap())
            .unwrap();
    index["slices"].as_u64()
}
