//! `params_from`: a stage takes params from an upstream output (the final training takes the best
//! params tune found). Tested through the library with two kinds this test registers.

use std::path::Path;

use covseg::cache::hash_memo::HashMemo;
use covseg::cache::store::ArtifactStore;
use covseg::pipeline::config::Pipeline;
use covseg::pipeline::dag::Dag;
use covseg::pipeline::kind::{
    KindSpec, OutputSpec, ParamError, Resources, StageFailure, StageJob, StageKind, typed_params,
};
use covseg::pipeline::registry::Registry;
use covseg::running::executor::{self, RunOptions};
use covseg::running::ui::{LogFormat, Ui};

#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Emit {
    lr: f64,
}

/// Writes `{"lr": <its own lr param>}`: stands in for tune's best params.
struct EmitParams;
const BEST: OutputSpec = OutputSpec {
    name: "best",
    file: "best.json",
    about: "best params",
};

impl StageKind for EmitParams {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "emit",
            version: 1,
            about: "",
            inputs: &[],
            outputs: &[BEST],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
            golden: &[],
        };
        &SPEC
    }
    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<Emit>(raw, |_| Ok(()))
    }
    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        std::fs::write(job.output(&BEST), job.params.to_string())
            .map_err(|e| StageFailure::internal(e.to_string()))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Train {
    lr: f64,
    epochs: u32,
}
impl Default for Train {
    fn default() -> Self {
        Self { lr: 0.1, epochs: 1 }
    }
}

/// Writes the params it ran with.
struct EchoParams;
const USED: OutputSpec = OutputSpec {
    name: "used",
    file: "used.json",
    about: "params used",
};

impl StageKind for EchoParams {
    fn spec(&self) -> &KindSpec {
        const SPEC: KindSpec = KindSpec {
            name: "echo",
            version: 1,
            about: "",
            inputs: &[],
            outputs: &[USED],
            uses_seed: false,
            resources: Resources { gpu: 0, cpu: 1 },
            golden: &[],
        };
        &SPEC
    }
    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError> {
        typed_params::<Train>(raw, |_| Ok(()))
    }
    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure> {
        std::fs::write(job.output(&USED), job.params.to_string())
            .map_err(|e| StageFailure::internal(e.to_string()))
    }
}

fn run(dir: &Path, emitted_lr: f64) -> Vec<(String, String, serde_json::Value)> {
    let registry = Registry::new(vec![&EmitParams, &EchoParams]);
    let text = format!(
        "[[stage]]\nname = \"tune\"\nkind = \"emit\"\nparams = {{ lr = {emitted_lr:?} }}\n\n[[stage]]\nname = \"other\"\nkind = \"echo\"\n\n[[stage]]\nname = \"final\"\nkind = \"echo\"\nparams = {{ epochs = 7 }}\nparams_from = \"@tune.best\"\n"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, &text).unwrap();
    let pipeline = Pipeline::parse(&path, text, &registry).unwrap();
    let dag = Dag::new(&pipeline).unwrap();
    let store = ArtifactStore::open(&pipeline.cache_dir, true).unwrap();
    let memo = HashMemo::open(store.memo_file());
    let ui = Ui::new(LogFormat::Human, -1);
    let record = executor::run(
        &pipeline,
        &dag,
        &store,
        &memo,
        &RunOptions {
            selected: vec![],
            force: false,
            jobs: 2,
        },
        &ui,
    )
    .unwrap();
    record
        .stages
        .iter()
        .map(|s| {
            let entry = store.lookup(&s.key.unwrap()).unwrap().unwrap();
            let used = entry
                .output_path("used")
                .or_else(|| entry.output_path("best"))
                .unwrap();
            (
                s.name.clone(),
                format!("{:?}", s.outcome).to_lowercase(),
                serde_json::from_slice(&std::fs::read(used).unwrap()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn best_params_reach_the_final_stage_and_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), 0.001);
    let final_params = &first.iter().find(|s| s.0 == "final").unwrap().2;
    assert_eq!(
        final_params,
        &serde_json::json!({"lr": 0.001, "epochs": 7}),
        "upstream params merge over the written ones"
    );

    let same = run(dir.path(), 0.001);
    assert!(same.iter().all(|s| s.1 == "hit"));

    // A different search result reruns the final stage, and nothing else downstream of nothing.
    let changed = run(dir.path(), 0.0003);
    let outcome = |name: &str| changed.iter().find(|s| s.0 == name).unwrap().1.clone();
    assert_eq!(
        (outcome("tune"), outcome("other"), outcome("final")),
        ("ran".into(), "hit".into(), "ran".into())
    );
    assert_eq!(
        changed.iter().find(|s| s.0 == "final").unwrap().2["lr"],
        0.0003
    );
}
