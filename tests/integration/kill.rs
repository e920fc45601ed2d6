//! A run killed with SIGKILL in the middle of a stage leaves nothing a later run mistakes for a
//! result, and the rerun gives the same bytes as an undisturbed run.

use std::time::{Duration, Instant};

use crate::test::Test;

const SLOW: &str = r#"
[pipeline]
seed = 3

[[stage]]
name = "phantoms"
kind = "synth"
params = { slices = 400, size = 256 }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }
"#;

#[test]
fn sigkill_mid_stage_then_rerun_gives_the_right_result() {
    let mut t = Test::new().pipeline(SLOW).args(["run"]);
    let mut child = t.command(&["run".to_owned()]).spawn().unwrap();
    let tmp = t.cache().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the stage is writing into its staging folder, then kill it mid-way.
    loop {
        let staging = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        if staging > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stage never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed; make the stage slower"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the stage finished before it could be killed; make it slower"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        t.objects().is_empty(),
        "a killed stage must not leave an entry"
    );
    assert!(t.runs().is_empty(), "a killed run writes no run record");

    t.then(["run"]).go();
    assert_eq!(
        t.last_outcomes().iter().filter(|(_, o)| o == "ran").count(),
        2
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the rerun removed the debris"
    );
    t.then(["cache", "verify"]).go();

    // The same pipeline in a fresh folder, undisturbed, gives the same bytes.
    let mut clean = Test::new().pipeline(SLOW).args(["run"]);
    clean.run();
    for (stage, file) in [
        ("phantoms", "images.npy"),
        ("phantoms", "masks.npy"),
        ("split", "splits.json"),
    ] {
        assert_eq!(
            std::fs::read(t.output(stage, file)).unwrap(),
            std::fs::read(clean.output(stage, file)).unwrap(),
            "{file}"
        );
    }
}
