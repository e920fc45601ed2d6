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
