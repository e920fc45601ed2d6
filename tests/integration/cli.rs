//! Small commands: kinds, hash, synth, help.

use crate::test::Test;

#[test]
fn kinds_lists_inputs_outputs_and_defaults() {
    let mut t = Test::new().args(["kinds"]);
    insta::assert_snapshot!(t.run().stdout);
}

#[test]
fn hash_matches_blake3() {
    let mut t = Test::new().file("abc.txt", "abc").args(["hash", "abc.txt"]);
    assert_eq!(
        t.run().stdout,
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85  abc.txt\n"
    );
}

#[test]
fn synth_writes_kaggle_files_deterministically() {
    let mut t = Test::new().args([
        "synth", "--out", "a", "--slices", "3", "--size", "64", "--seed", "9",
    ]);
    t.run();
    t.then([
        "synth", "--out", "b", "--slices", "3", "--size", "64", "--seed", "9",
    ])
    .go();
    for f in ["images_medseg.npy", "masks_medseg.npy"] {
        assert_eq!(
            std::fs::read(t.path().join("a").join(f)).unwrap(),
            std::fs::read(t.path().join("b").join(f)).unwrap()
        );
    }
    let bad = t
        .then(["synth", "--out", "c", "--size", "40"])
        .expect(2)
        .go();
    assert!(bad.stderr.contains("size"), "{}", bad.stderr);
}

#[test]
fn usage_errors_exit_2() {
    Test::new().args(["run", "--jobs", "many"]).status(2).run();
    Test::new().args(["frobnicate"]).status(2).run();
}

#[test]
fn exec_runs_one_kind_outside_the_cache() {
    let mut t = Test::new().args(["synth", "--out", "data", "--slices", "6", "--size", "64"]);
    t.run();
    let out = t
        .then([
            "exec",
            "split",
            "-i",
            "medseg_images=data/images_medseg.npy",
            "-i",
            "medseg_masks=data/masks_medseg.npy",
            "-P",
            "folds=3",
            "--out",
            "split",
        ])
        .go();
    assert!(
        out.stdout
            .starts_with("wrote split/splits.json, split/preprocessing.json"),
        "{}",
        out.stdout
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("split/splits.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["folds"].as_array().unwrap().len(), 3);
    t.then([
        "exec",
        "stats",
        "-i",
        "images=data/images_medseg.npy",
        "-i",
        "masks=data/masks_medseg.npy",
        "-i",
        "manifest=split/splits.json",
        "-P",
        "part=val",
        "--out",
        "stats",
    ])
    .go();
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("stats/stats.json")).unwrap()).unwrap();
    assert_eq!(
        stats["slices"], 2,
        "two of six slices validate in fold 0 of 3"
    );
    let bad = t
        .then([
            "exec",
            "split",
            "-i",
            "medseg_images=data/images_medseg.npy",
            "-P",
            "fold=1",
            "--out",
            "x",
        ])
        .expect(2)
        .go();
    assert!(
        bad.stderr
            .contains("needs `medseg_images` and `medseg_masks`"),
        "{}",
        bad.stderr
    );
    let typo = t
        .then(["exec", "split", "-P", "flods=1", "--out", "x"])
        .expect(2)
        .go();
    assert!(
        typo.stderr.contains("did you mean `folds`?"),
        "{}",
        typo.stderr
    );
    assert!(
        !t.path().join("x").exists() || std::fs::read_dir(t.path().join("x")).unwrap().count() == 0
    );
}

/// Every example pipeline in the repository is valid: `plan` reads it and lists all its stages.
#[test]
fn every_example_pipeline_plans() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut examples: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "{examples:?}");
    for example in examples {
        let name = example.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&example).unwrap();
        let stages = text.matches("[[stage]]").count();
        let file = format!("examples/{name}");
        let mut t = Test::new()
            .file(&file, &text)
            .args(["plan", "--pipeline", file.as_str()]);
        let plan = t.run();
        let listed = plan
            .stdout
            .lines()
            .filter(|l| l.contains("stale") || l.contains("cached") || l.contains("blocked"))
            .count();
        assert!(
            listed >= stages,
            "{name}: {stages} stages, plan:\n{}",
            plan.stdout
        );
    }
}
