//! `covseg cache ls | verify | gc`.

use crate::test::{Test, pipeline, redact};

#[test]
fn verify_names_the_entry_with_one_flipped_byte_and_fix_rebuilds_it() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["run"]);
    t.run();
    t.then(["cache", "verify"]).go();
    let images = t.output("phantoms", "images.npy");
    let mut bytes = std::fs::read(&images).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&images, &bytes).unwrap();

    let out = t.then(["cache", "verify"]).expect(1).go();
    let key = images
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        out.stdout
            .contains(&format!("DAMAGED cache/objects/{key} (stage phantoms)")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("images.npy: content differs from its recorded digest")
    );
    assert!(out.stdout.contains("3 entries checked, 1 damaged"));
    assert_eq!(
        out.stdout.matches("DAMAGED").count(),
        1,
        "only the damaged entry is named"
    );

    t.then(["cache", "verify", "--fix"]).go();
    t.then(["run"]).go();
    let outcomes = t.last_outcomes();
    assert_eq!(
        outcomes.iter().find(|(n, _)| n == "phantoms").unwrap().1,
        "ran"
    );
    assert_eq!(
        outcomes.iter().find(|(n, _)| n == "split").unwrap().1,
        "hit",
        "the rebuilt bytes are the same, so split stays cached"
    );
    t.then(["cache", "verify"]).go();
}

#[test]
fn gc_keeps_what_the_newest_runs_use() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["run"]);
    t.run();
    std::fs::write(t.path().join("pipeline.toml"), pipeline("folds = 3")).unwrap();
    t.then(["run"]).go();
    assert_eq!(t.objects().len(), 4);
    let newest: Vec<String> = t.runs().last().unwrap()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_owned())
        .collect();

    let dry = t
        .then(["cache", "gc", "--keep-last", "1", "--dry-run"])
        .go();
    assert!(
        dry.stdout.contains("would remove 1 entry"),
        "{}",
        dry.stdout
    );
    assert_eq!(t.objects().len(), 4);
    let out = t.then(["cache", "gc", "--keep-last", "1"]).go();
    insta::assert_snapshot!("gc", redact(&out.stdout));
    let mut kept = t.objects();
    kept.sort();
    let mut expected = newest.clone();
    expected.sort();
    assert_eq!(
        kept, expected,
        "exactly the entries of the newest run are kept"
    );
    assert_eq!(t.runs().len(), 1);
    t.then(["run"]).go();
    assert!(t.last_outcomes().iter().all(|(_, o)| o == "hit"));

    let ls = t.then(["cache", "ls"]).go();
    insta::assert_snapshot!("ls", redact(&ls.stdout));
}

#[test]
fn cache_commands_on_a_missing_cache_explain_themselves() {
    let mut t = Test::new()
        .pipeline(&pipeline(""))
        .args(["cache", "ls"])
        .status(2);
    let out = t.run();
    assert!(
        out.stderr.contains("is not a covseg cache"),
        "{}",
        out.stderr
    );
}

/// The output folders of an entry folder (`out`, `out.<n>`), sorted.
fn output_folders(entry: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(entry)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == "out" || n.starts_with("out."))
        .collect();
    names.sort();
    names
}

#[test]
fn force_publishes_beside_a_result_another_process_may_be_reading() {
    let mut t = Test::new().pipeline(&pipeline("folds = 2")).args(["run"]);
    t.run();
    let old = t.output("phantoms", "images.npy");
    let old_bytes = std::fs::read(&old).unwrap();
    let entry = old.parent().unwrap().parent().unwrap().to_owned();

    // Another covseg process is running: it holds the cache's gc lock shared, as every run does.
    let reader = std::fs::File::open(t.cache().join("gc.lock")).unwrap();
    reader.lock_shared().unwrap();
    t.then(["run", "--stage", "phantoms", "--force"]).go();
    assert_eq!(
        std::fs::read(&old).unwrap(),
        old_bytes,
        "the result being read is still there, whole"
    );
    let new = t.output("phantoms", "images.npy");
    assert_ne!(new, old, "the new result is published beside it");
    assert!(new.starts_with(&entry), "under the same key");
    assert_eq!(output_folders(&entry).len(), 2);
    t.then(["cache", "verify"]).go();
    drop(reader);

    // With nobody else in the cache, gc removes the replaced result.
    let gc = t.then(["cache", "gc", "--keep-last", "10"]).go();
    assert!(gc.stdout.contains("removed 0 entries"), "{}", gc.stdout);
    assert_eq!(output_folders(&entry).len(), 1);
    assert!(!old.exists());
    assert_eq!(
        std::fs::read(&new).unwrap(),
        old_bytes,
        "same seed, same bytes"
    );

    // A forced rerun alone in the cache removes what it replaced when it ends.
    t.then(["run", "--stage", "phantoms", "--force"]).go();
    assert_eq!(output_folders(&entry).len(), 1);
    assert!(!new.exists());
    assert!(t.output("phantoms", "images.npy").is_file());
    t.then(["cache", "verify"]).go();
}
