//! What the engine knows about a stage kind: its inputs, outputs, params and version, and how to
//! run it. Kinds are registered by the adapter table; the engine never looks inside them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A declared input of a kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub about: &'static str,
}

/// A declared output: a file (or folder) the stage writes under its output folder.
#[derive(Debug, Clone, Copy)]
pub struct OutputSpec {
    pub name: &'static str,
    pub file: &'static str,
    pub about: &'static str,
}

/// Resources a stage needs while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub gpu: u32,
    pub cpu: u32,
}

pub struct KindSpec {
    pub name: &'static str,
    /// Bumped whenever the kind's results change for the same inputs and params.
    pub version: u32,
    pub about: &'static str,
    pub inputs: &'static [InputSpec],
    pub outputs: &'static [OutputSpec],
    /// Whether the pipeline's seed enters the key.
    pub uses_seed: bool,
    pub resources: Resources,
    /// The digest of the kind's outputs on the fixed inputs of the golden test
    /// (`tests/integration/golden.rs`), one entry per version, oldest first. The test fails when
    /// the outputs change and when the last entry is not `version`: a change of results needs a
    /// new version, or users' caches would hand out results of the old code.
    pub golden: &'static [(u32, &'static str)],
}

impl KindSpec {
    /// (name, file) of each declared output, as the store publishes them.
    pub fn output_files(&self) -> Vec<(&'static str, &'static str)> {
        self.outputs.iter().map(|o| (o.name, o.file)).collect()
    }
}

/// Runs a stage's work on a pool of `threads` workers; a panic becomes a failure that says it is
/// a bug, instead of taking the process down.
pub fn run_guarded<T>(
    threads: usize,
    work: impl FnOnce() -> Result<T, StageFailure> + Send,
) -> Result<T, StageFailure>
where
    T: Send,
{
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| {
            StageFailure::internal(format!("cannot start {threads} worker threads: {e}"))
        })?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(work))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(StageFailure::internal(format!(
                "the stage panicked (a bug in covseg, please report it): {what}"
            )))
        }
    }
}

/// A param problem found by a kind: which key (if one) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub key: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

/// Everything a stage gets to run: resolved input paths, its normalised params, and where to write.
pub struct StageJob<'a> {
    pub inputs: BTreeMap<String, PathBuf>,
    pub params: &'a serde_json::Value,
    pub seed: u64,
    pub out_dir: &'a Path,
    /// A folder that survives a killed run of the same key (checkpoints to resume from); removed
    /// once the result is published.
    pub work_dir: &'a Path,
    pub progress: &'a dyn covseg_stages::Progress,
    /// The engine's side of the job, for kinds that run other work through the cache (`tune`);
    /// `None` outside a pipeline run (`covseg exec`, a trial).
    pub engine: Option<&'a EngineContext<'a>>,
}

/// What a stage that drives cached sub-runs needs from the engine.
pub struct EngineContext<'a> {
    pub store: &'a crate::cache::store::ArtifactStore,
    /// The stage's own key parts: its input digests are what its sub-runs are keyed on.
    pub parts: &'a crate::cache::key::KeyParts,
    pub stage: &'a str,
    pub pipeline: String,
    /// Worker threads the stage may use.
    pub threads: usize,
    /// GPUs the stage holds (its `resources.gpu`).
    pub gpus: u32,
    /// Where its sub-runs (tuning trials) go.
    pub executor: &'a crate::pipeline::executor::Executor,
    /// The stage's own job settings (its `resources`), for the jobs it submits.
    pub job: &'a crate::pipeline::executor::JobOverrides,
}

impl StageJob<'_> {
    /// The path of a declared input; optional inputs give `None` when not wired.
    pub fn input(&self, name: &str) -> Option<&Path> {
        self.inputs.get(name).map(PathBuf::as_path)
    }

    /// The path of a required input (the pipeline's validation guarantees it is wired).
    pub fn required(&self, name: &str) -> Result<&Path, StageFailure> {
        self.input(name).ok_or_else(|| {
            StageFailure::internal(format!("the required input `{name}` is not wired"))
        })
    }

    /// Where to write a declared output.
    pub fn output(&self, spec: &OutputSpec) -> PathBuf {
        self.out_dir.join(spec.file)
    }

    /// The params as the kind's typed config.
    pub fn config<P: DeserializeOwned>(&self) -> Result<P, StageFailure> {
        serde_json::from_value(self.params.clone())
            .map_err(|e| StageFailure::internal(format!("params: {e}")))
    }
}

/// Why a stage failed.
#[derive(Debug, Clone)]
pub struct StageFailure {
    pub message: String,
    /// The user's data or params were wrong (exit code 2), rather than the machine failing.
    pub input_error: bool,
}

impl StageFailure {
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            input_error: false,
        }
    }
}

impl From<covseg_stages::Error> for StageFailure {
    fn from(e: covseg_stages::Error) -> Self {
        Self {
            input_error: e.is_input_error(),
            message: e.to_string(),
        }
    }
}

pub trait StageKind: Send + Sync {
    fn spec(&self) -> &KindSpec;
    /// Validates the params table and returns it normalised (every field, defaults filled in): this
    /// is what enters the key, so only params the kind reads can change it.
    fn params(&self, raw: &toml::Table) -> Result<serde_json::Value, ParamError>;
    /// Checks which optional inputs are wired together (e.g. "one source, not two"); the message
    /// says what to change.
    /// `params` is the normalised params table (before any `params_from` merge).
    fn check_inputs(&self, _wired: &[&str], _params: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, job: &StageJob<'_>) -> Result<(), StageFailure>;
    /// The dotted path of the kind's device param (`device`, `train.device`) for kinds that run
    /// on a device. The pipeline's `[pipeline] device` is its default; a stage's own value wins.
    fn device_param(&self) -> Option<&'static str> {
        None
    }
    /// The device class (`cpu`, `cuda`, `wgpu`) the results of these normalised params depend
    /// on; it enters the key. `auto` is resolved on this machine.
    fn device_class(&self, params: &serde_json::Value) -> Option<&'static str> {
        let path = self.device_param()?;
        let value = path.split('.').try_fold(params, |v, k| v.get(k))?;
        let choice: covseg_stages::training::DeviceChoice =
            serde_json::from_value(value.clone()).ok()?;
        Some(covseg_stages::training::device_class(choice))
    }
    /// Kinds whose runs can be tuning trials (run in segments of epochs, scored per epoch).
    fn tunable(&self) -> Option<&dyn Tunable> {
        None
    }
}

/// How far a trial segment got.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialProgress {
    /// The validation score after each epoch done so far.
    pub scores: Vec<f64>,
    /// The run is complete and its outputs are written (it can be published).
    pub complete: bool,
}

/// A kind whose runs can be cut into segments: a tuning trial runs it until a number of epochs,
/// resuming from the work folder, and is scored after each epoch.
pub trait Tunable: Send + Sync {
    /// Runs until `epochs` epochs are done (or the run completes earlier).
    fn run_until(&self, job: &StageJob<'_>, epochs: usize) -> Result<TrialProgress, StageFailure>;
    /// The per-epoch scores of a complete run, from its outputs.
    fn scores(&self, out_dir: &Path) -> Result<Vec<f64>, StageFailure>;
}

/// The one constructor of a stage's key parts: a run of `kind` with these normalised params, the
/// pipeline's seed (for kinds that use it) and these input digests. Pipeline stages and tuning
/// trials both come through here, so a train stage with a trial's params is that trial's entry.
pub fn key_parts(
    kind: &dyn StageKind,
    params: serde_json::Value,
    seed: u64,
    inputs: BTreeMap<String, crate::cache::digest::Digest>,
) -> crate::cache::key::KeyParts {
    let spec = kind.spec();
    crate::cache::key::KeyParts {
        kind: spec.name.to_owned(),
        kind_version: spec.version,
        covseg_version: crate::cache::key::COVSEG_VERSION.to_owned(),
        device: kind.device_class(&params).map(str::to_owned),
        seed: spec.uses_seed.then_some(seed),
        params,
        inputs,
    }
}

/// The field names a derived `Deserialize` struct declares, read off what it asks a deserializer
/// for (serde passes them to `deserialize_struct`).
fn struct_fields<P: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(std::cell::Cell<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0.set(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let fields = Fields(std::cell::Cell::new(&[]));
    let _ = P::deserialize(&fields);
    fields.0.get()
}

/// Normalises params through a typed config: unknown keys are rejected with a suggestion, and the
/// result lists every field so that defaults are part of the key.
pub fn typed_params<P>(
    raw: &toml::Table,
    validate: impl Fn(&P) -> Result<(), String>,
) -> Result<serde_json::Value, ParamError>
where
    P: DeserializeOwned + Serialize + Default,
{
    let known = serde_json::to_value(P::default()).map_err(|e| ParamError {
        key: None,
        message: e.to_string(),
        help: None,
    })?;
    // Every field the struct declares, including optional ones it leaves out when unset.
    let mut known_keys: Vec<&str> = known
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for field in struct_fields::<P>() {
        if !known_keys.contains(field) {
            known_keys.push(field);
        }
    }
    for key in raw.keys() {
        if !known_keys.contains(&key.as_str()) {
            return Err(ParamError {
                key: Some(key.clone()),
                message: format!("unknown param `{key}`"),
                help: Some(crate::pipeline::suggest::help(
                    key,
                    known_keys.iter().copied(),
                )),
            });
        }
    }
    // Parsed from text so a type error has a span, which names the offending key.
    let text = toml::to_string(raw).map_err(|e| ParamError {
        key: None,
        message: e.to_string(),
        help: None,
    })?;
    let typed: P = toml::from_str(&text).map_err(|e: toml::de::Error| {
        let key = e.span().and_then(|span| {
            let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let line = &text[line_start..];
            let key = line.split(['=', '.', ' ']).next()?.trim().trim_matches('"');
            raw.contains_key(key).then(|| key.to_owned())
        });
        ParamError {
            key,
            message: e.message().trim().to_owned(),
            help: None,
        }
    })?;
    validate(&typed).map_err(|message| {
        let key = known_keys
            .iter()
            .find(|k| message.starts_with(&format!("params.{k}")))
            .map(|k| (*k).to_owned());
        ParamError {
            key,
            message,
            help: None,
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| ParamError {
        key: None,
        message: e.to_string(),
        help: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, serde::Deserialize)]
    #[serde(default)]
    struct Params {
        size: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        pixel_mm: Option<f64>,
    }

    fn parse(text: &str) -> Result<serde_json::Value, ParamError> {
        typed_params::<Params>(&toml::from_str(text).unwrap(), |_| Ok(()))
    }

    #[test]
    fn an_optional_field_left_out_of_the_defaults_is_still_a_known_param() {
        assert_eq!(
            parse("size = 3\npixel_mm = 0.7").unwrap(),
            serde_json::json!({ "size": 3, "pixel_mm": 0.7 })
        );
        // Unset, it stays out of the key, so old cache entries still match.
        assert_eq!(parse("").unwrap(), serde_json::json!({ "size": 0 }));
        let err = parse("pixel_m = 0.7").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("pixel_m"));
    }
}
