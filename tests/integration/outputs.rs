//! Finding results: `covseg show` and the outputs folder of links into the cache.

use std::path::Path;

use crate::test::{Test, pipeline};

fn same_file(a: &Path, b: &Path) -> bool {
    a.canonicalize().unwrap() == b.canonicalize().unwrap()
}

#[test]
fn show_prints_the_path_of_a_current_output_or_says_how_to_make_it() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["run"]);
    t.run();
    let shown = t.then(["show", "split.manifest"]).go();
    let path = Path::new(shown.stdout.trim_end());
    assert!(path.is_absolute(), "{}", shown.stdout);
    assert!(same_file(path, &t.output("split", "splits.json")));

    // A stage of one output needs no output name.
    let one = t.then(["show", "holdout.images"]).go();
    assert!(same_file(
        Path::new(one.stdout.trim_end()),
        &t.output("holdout", "images.npy")
    ));

    let all = t.then(["show", "split", "--json"]).go();
    let json: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(json["stage"], "split");
    assert_eq!(json["kind"], "split");
    let outputs = json["outputs"].as_object().unwrap();
    assert!(outputs.contains_key("val_images") && outputs.contains_key("preprocessing"));
    for path in outputs.values() {
        assert!(Path::new(path.as_str().unwrap()).exists(), "{path}");
    }

    let many = t.then(["show", "split"]).expect(2).go();
    assert!(
        many.stderr
            .contains("stage `split` has 6 outputs; name one"),
        "{}",
        many.stderr
    );
    assert!(many.stderr.contains("train_images"), "{}", many.stderr);
    let wrong = t.then(["show", "split.report"]).expect(2).go();
    assert!(
        wrong.stderr.contains("has no output `report`"),
        "{}",
        wrong.stderr
    );
    let unknown = t.then(["show", "splitt.manifest"]).expect(2).go();
    assert!(
        unknown.stderr.contains("no stage named `splitt`"),
        "{}",
        unknown.stderr
    );

    std::fs::write(t.path().join("pipeline.toml"), pipeline("folds = 3")).unwrap();
    let stale = t.then(["show", "split.manifest"]).expect(2).go();
    assert!(
        stale
            .stderr
            .contains("stage `split` has no current result: it is stale: params.folds 2 → 3"),
        "{}",
        stale.stderr
    );
    assert!(
        stale.stderr.contains("covseg run --stage split"),
        "{}",
        stale.stderr
    );
}

/// The link at `outputs/<place>`: it must be a symbolic link (relative, into the cache).
fn link(t: &Test, place: &str) -> std::path::PathBuf {
    let path = t.path().join("outputs").join(place);
    let target = std::fs::read_link(&path).unwrap_or_else(|e| panic!("{place}: {e}"));
    assert!(target.is_relative(), "{}", target.display());
    path
}

#[test]
fn the_outputs_folder_follows_the_current_results_and_gc_keeps_what_it_links() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["run"]);
    t.run();
    let manifest = link(&t, "split/manifest.json");
    assert!(same_file(&manifest, &t.output("split", "splits.json")));
    assert!(same_file(
        &link(&t, "split/val_images.npy"),
        &t.output("split", "val_images.npy")
    ));
    assert!(same_file(
        &link(&t, "holdout/images.npy"),
        &t.output("holdout", "images.npy")
    ));
    let first = std::fs::read(&manifest).unwrap();

    // A param changes: the link is replaced and shows the new result.
    std::fs::write(t.path().join("pipeline.toml"), pipeline("folds = 3")).unwrap();
    t.then(["run"]).go();
    let manifest = link(&t, "split/manifest.json");
    assert!(same_file(&manifest, &t.output("split", "splits.json")));
    assert_ne!(std::fs::read(&manifest).unwrap(), first);

    // A stage leaves the pipeline: its links and folder go; a file the user put there stays.
    std::fs::write(t.path().join("outputs/notes.txt"), "mine").unwrap();
    let without_holdout = pipeline("folds = 3").replace(
        "[[stage]]\nname = \"holdout\"\nkind = \"synth\"\nparams = { slices = 2, size = 64 }\n",
        "",
    );
    assert!(!without_holdout.contains("holdout"));
    std::fs::write(t.path().join("pipeline.toml"), &without_holdout).unwrap();
    t.then(["run"]).go();
    assert!(!t.path().join("outputs/holdout").exists());
    assert!(t.path().join("outputs/notes.txt").exists());

    // A stale stage's link goes too: what it showed is no longer the current result.
    std::fs::write(
        t.path().join("pipeline.toml"),
        without_holdout.replace("folds = 3", "folds = 4"),
    )
    .unwrap();
    t.then(["run", "--stage", "phantoms"]).go();
    assert!(!t.path().join("outputs/split").exists());
    assert!(t.path().join("outputs/phantoms/images.npy").exists());
    std::fs::write(t.path().join("pipeline.toml"), &without_holdout).unwrap();
    t.then(["run"]).go();
    let linked = t.output("split", "splits.json");
    assert!(same_file(&link(&t, "split/manifest.json"), &linked));

    // gc keeping no run still keeps what the folder links to, and deletes nothing through it.
    let before = t.objects().len();
    let gc = t.then(["cache", "gc", "--keep-last", "0"]).go();
    assert!(gc.stdout.contains("removed"), "{}", gc.stdout);
    assert_eq!(
        t.objects().len(),
        2,
        "phantoms and split (folds = 3) of {before}"
    );
    assert!(linked.exists());
    assert!(link(&t, "split/manifest.json").exists());
    assert!(link(&t, "phantoms/images.npy").exists());
    t.then(["run"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));
}

#[test]
fn an_empty_outputs_setting_turns_the_folder_off() {
    let toml = pipeline("folds = 2").replace("seed = 7", "seed = 7\noutputs = \"\"");
    let mut t = Test::new().pipeline(&toml).args(["run"]);
    t.run();
    assert!(!t.path().join("outputs").exists());
    t.then(["show", "split.manifest"]).go();
}
