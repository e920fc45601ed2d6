//! Every configuration mistake gets one clear message with its location, exit code 2, and nothing
//! is written.

use crate::test::Test;

fn error_of(toml: &str) -> String {
    let mut t = Test::new().pipeline(toml).args(["run"]).status(2);
    let out = t.run();
    assert!(
        !t.cache().exists(),
        "a configuration error must not create the cache"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    out.stderr
}

const SYNTH: &str = "[[stage]]\nname = \"phantoms\"\nkind = \"synth\"\n";

#[test]
fn malformed_toml_names_its_line() {
    insta::assert_snapshot!(error_of(
        "[pipeline]\nseed = 1\n\n[[stage]]\nname = \"a\nkind = \"synth\"\n"
    ));
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    insta::assert_snapshot!(error_of(&format!("[pipline]\nseed = 1\n{SYNTH}")));
}

#[test]
fn unknown_stage_key_suggests_the_right_one() {
    insta::assert_snapshot!(error_of(&format!("{SYNTH}parms = {{ slices = 2 }}\n")));
}

#[test]
fn unknown_kind() {
    insta::assert_snapshot!(error_of("[[stage]]\nname = \"a\"\nkind = \"synht\"\n"));
}

#[test]
fn duplicate_names() {
    insta::assert_snapshot!(error_of(&format!("{SYNTH}\n{SYNTH}")));
}

#[test]
fn reference_to_a_missing_stage() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}\n[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = {{ medseg_images = \"@phantom.images\", medseg_masks = \"@phantoms.masks\" }}\n"
    )));
}

#[test]
fn reference_to_a_missing_output() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}\n[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = {{ medseg_images = \"@phantoms.image\", medseg_masks = \"@phantoms.masks\" }}\n"
    )));
}

#[test]
fn missing_required_input() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}\n[[stage]]\nname = \"stats\"\nkind = \"stats\"\ninputs = {{ images = \"@phantoms.images\" }}\n"
    )));
}

#[test]
fn cycle_is_printed() {
    let toml = r#"
[[stage]]
name = "a"
kind = "split"
inputs = { medseg_images = "@c.manifest", medseg_masks = "@c.manifest" }

[[stage]]
name = "b"
kind = "split"
inputs = { medseg_images = "@a.manifest", medseg_masks = "@a.manifest" }

[[stage]]
name = "c"
kind = "split"
inputs = { medseg_images = "@b.manifest", medseg_masks = "@b.manifest" }
"#;
    let err = error_of(toml);
    assert!(err.contains("a → b → c → a"), "{err}");
    insta::assert_snapshot!(err);
}

#[test]
fn missing_external_input_says_how_to_get_it() {
    let toml = r#"
[data]
root = "data"
hint = "download the Kaggle files with `kaggle competitions download -c covid-segmentation` and unzip them into data/"
files = { images = "images_medseg.npy", masks = "masks_medseg.npy" }

[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "data:images", medseg_masks = "data:masks" }
"#;
    insta::assert_snapshot!(error_of(toml));
}

#[test]
fn unknown_param_suggests_the_right_one() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}params = {{ slices = 2, szie = 64 }}\n"
    )));
}

#[test]
fn param_of_the_wrong_type() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}\n[stage.params]\nslices = \"many\"\n"
    )));
}

#[test]
fn param_out_of_range() {
    insta::assert_snapshot!(error_of(&format!("{SYNTH}params = {{ size = 40 }}\n")));
}

#[test]
fn unknown_device() {
    insta::assert_snapshot!(error_of(&format!("[pipeline]\ndevice = \"gpu\"\n{SYNTH}")));
}

#[test]
fn missing_pipeline_file() {
    let mut t = Test::new().args(["run"]).status(2);
    insta::assert_snapshot!(t.run().stderr);
}

#[test]
fn split_needs_exactly_one_source() {
    insta::assert_snapshot!(error_of(&format!(
        "{SYNTH}\n[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = {{ medseg_images = \"@phantoms.images\", medseg_masks = \"@phantoms.masks\", folder = \"data\" }}\n"
    )));
}

#[test]
fn executor_mistakes_name_the_setting_and_the_fix() {
    let cases = [
        ("unknown executor", "[executor]\nkind = \"slrum\"\n"),
        (
            "unknown key",
            "[executor]\nkind = \"slurm\"\npartiton = \"gpu\"\n",
        ),
        ("time", "[executor]\nkind = \"slurm\"\ntime = \"2h\"\n"),
        (
            "time of a kind",
            "[executor]\nkind = \"slurm\"\ntime = { trian = \"1:00:00\" }\n",
        ),
        ("mem", "[executor]\nkind = \"slurm\"\nmem = \"lots\"\n"),
        (
            "poll interval",
            "[executor]\nkind = \"slurm\"\npoll_interval = 0.0\n",
        ),
        (
            "job kinds",
            "[executor]\nkind = \"slurm\"\nkinds = [\"trian\"]\n",
        ),
        (
            "a stage's time",
            "[[stage]]\nname = \"phantoms\"\nkind = \"synth\"\nresources = { time = \"soon\" }\n",
        ),
    ];
    let mut text = String::new();
    for (what, toml) in cases {
        let toml = if toml.contains("[[stage]]") {
            toml.to_owned()
        } else {
            format!("{toml}\n{SYNTH}")
        };
        text.push_str(&format!("# {what}\n{}\n", error_of(&toml)));
    }
    insta::assert_snapshot!(text);
}
