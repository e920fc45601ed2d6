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
    t.then(["run", "--pipeline", "examples/demo.toml"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));
    let plan = t.then(["plan", "--pipeline", "examples/demo.toml"]).go();
    insta::assert_snapshot!("demo_plan", redact(&plan.stdout));
}
