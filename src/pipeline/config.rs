//! `pipeline.toml`: parsed, checked against the registered kinds, and resolved into a `Pipeline`.
//! Every problem becomes one `Diagnostic` naming the file, line and column, and how to fix it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Diagnostic, Location, Result};
use crate::pipeline::executor::{Executor, JobOverrides, RawExecutor, RawStageResources};
use crate::pipeline::kind::{Resources, StageKind};
use crate::pipeline::reference::InputRef;
use crate::pipeline::registry::Registry;
use crate::pipeline::suggest;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    pipeline: RawSettings,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    data: RawData,
    executor: Option<Spanned<RawExecutor>>,
    #[serde(default)]
    stage: Vec<Spanned<RawStage>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    name: Option<String>,
    cache: Option<String>,
    outputs: Option<String>,
    seed: Option<u64>,
    device: Option<Spanned<String>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawResources {
    gpu: Option<u32>,
    cpu: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawData {
    root: Option<String>,
    hint: Option<String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    inputs: BTreeMap<Spanned<String>, Spanned<String>>,
    params: Option<Spanned<toml::Table>>,
    params_from: Option<Spanned<String>>,
    resources: Option<RawStageResources>,
}

/// Where training runs; `auto` picks a real GPU when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Auto,
    Wgpu,
    Cuda,
    Cpu,
}

/// A stage as the engine sees it after validation.
pub struct Stage {
    pub name: String,
    pub kind: &'static dyn StageKind,
    pub inputs: BTreeMap<String, InputRef>,
    /// The params table as written, kept to merge `params_from` into at run time.
    pub raw_params: toml::Table,
    /// Normalised params; for a stage with `params_from` these are the written ones only, and the
    /// merged params are made when the upstream output exists.
    pub params: serde_json::Value,
    pub params_from: Option<InputRef>,
    pub resources: Resources,
    /// What a Slurm job of this stage asks for beyond the `[executor]` defaults.
    pub job: JobOverrides,
    pub line: usize,
}

impl Stage {
    /// Every reference this stage depends on, inputs and `params_from`.
    pub fn references(&self) -> impl Iterator<Item = &InputRef> {
        self.inputs.values().chain(self.params_from.iter())
    }
}

pub struct Pipeline {
    /// The pipeline file as the user named it (used in messages).
    pub path: PathBuf,
    /// The folder relative paths are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub cache_dir: PathBuf,
    /// The outputs folder (`outputs/<stage>/<output>` links to the current results); `None` when
    /// the pipeline turns it off with `outputs = ""`.
    pub outputs_dir: Option<PathBuf>,
    pub seed: u64,
    pub device: Device,
    pub limits: Resources,
    pub executor: Executor,
    pub data_hint: Option<String>,
    pub stages: Vec<Stage>,
    /// Stage name → index in `stages`.
    index: std::collections::HashMap<String, usize>,
    text: String,
}

/// Turns a byte offset into a 1-based line and column.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(offset)
}

/// Where each line of a text starts, so that many offsets turn into lines in O(log n) each (a
/// pipeline of 100,000 stages asks 200,000 times).
struct LineIndex {
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            starts,
            len: text.len(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.len);
        let line = self.starts.partition_point(|&s| s <= offset);
        (line, offset - self.starts[line - 1] + 1)
    }
}

impl Pipeline {
    pub fn load(path: &Path, registry: &Registry) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut d = Diagnostic::new(format!("cannot read pipeline file {}: {e}", path.display()));
            if e.kind() == std::io::ErrorKind::NotFound {
                d = d.help("run covseg in a folder with a pipeline.toml, or pass --pipeline FILE (examples/demo.toml is the built-in demo)");
            }
            d
        })?;
        Self::parse(path, text, registry)
    }

    pub fn parse(path: &Path, text: String, registry: &Registry) -> Result<Self> {
        let lines = LineIndex::new(&text);
        let at = |span: std::ops::Range<usize>| Location {
            file: path.to_owned(),
            line: Some(lines.line_col(span.start)),
        };
        let raw: RawPipeline = toml::from_str(&text).map_err(|e| {
            let location = Location {
                file: path.to_owned(),
                line: e.span().map(|s| lines.line_col(s.start)),
            };
            toml_diagnostic(e.message()).at(location)
        })?;
        // Relative to the pipeline file's folder; left relative to the working folder when that is
        // where the file is, so messages show `cache/...` rather than `./cache/...`.
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let device = match &raw.pipeline.device {
            None => Device::Auto,
            Some(d) => match d.get_ref().as_str() {
                "auto" => Device::Auto,
                "wgpu" => Device::Wgpu,
                "cuda" => Device::Cuda,
                "cpu" => Device::Cpu,
                other => {
                    return Err(Diagnostic::new(format!("unknown device `{other}`"))
                        .at(at(d.span()))
                        .help(suggest::help(other, ["auto", "wgpu", "cuda", "cpu"]))
                        .into());
                }
            },
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let limits = Resources {
            gpu: raw.resources.gpu.unwrap_or(1),
            cpu: raw.resources.cpu.unwrap_or(cpus).max(1),
        };
        let data_root = dir.join(raw.data.root.as_deref().unwrap_or(""));

        // Names first, so references can be checked against all of them in any order.
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut kinds: Vec<&'static dyn StageKind> = Vec::new();
        for stage in &raw.stage {
            let s = stage.get_ref();
            let name = s.name.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Diagnostic::new(format!("invalid stage name `{name}`"))
                    .at(at(s.name.span()))
                    .help("use letters, digits, `-` and `_` only")
                    .into());
            }
            if let Some(first) = names.get(name) {
                return Err(Diagnostic::new(format!("duplicate stage name `{name}`"))
                    .at(at(s.name.span()))
                    .help(format!("the first stage named `{name}` is at line {first}; give each stage its own name"))
                    .into());
            }
            names.insert(name.clone(), lines.line_col(stage.span().start).0);
            let kind = registry.get(s.kind.get_ref()).ok_or_else(|| {
                Diagnostic::new(format!("unknown stage kind `{}`", s.kind.get_ref()))
                    .at(at(s.kind.span()))
                    .help(suggest::help(s.kind.get_ref(), registry.names()))
            })?;
            kinds.push(kind);
        }

        let positions: std::collections::HashMap<&str, usize> = raw
            .stage
            .iter()
            .enumerate()
            .map(|(i, s)| (s.get_ref().name.get_ref().as_str(), i))
            .collect();
        let resolve = |value: &Spanned<String>| -> Result<InputRef> {
            let r = InputRef::parse(value.get_ref(), &dir, &data_root, &raw.data.files)
                .map_err(|d| d.at(at(value.span())))?;
            if let InputRef::Output { stage, output } = &r {
                let Some(index) = positions.get(stage.as_str()).copied() else {
                    return Err(Diagnostic::new(format!(
                        "`{}` refers to a stage that does not exist",
                        value.get_ref()
                    ))
                    .at(at(value.span()))
                    .help(suggest::help(stage, names.keys().map(String::as_str)))
                    .into());
                };
                let outputs = kinds[index].spec().outputs;
                if !outputs.iter().any(|o| o.name == output) {
                    return Err(Diagnostic::new(format!(
                        "stage `{stage}` (kind {}) has no output `{output}`",
                        kinds[index].spec().name
                    ))
                    .at(at(value.span()))
                    .help(suggest::help(output, outputs.iter().map(|o| o.name)))
                    .into());
                }
            }
            Ok(r)
        };

        let mut stages = Vec::new();
        for (stage, kind) in raw.stage.iter().zip(&kinds) {
            let s = stage.get_ref();
            let spec = kind.spec();
            let mut inputs = BTreeMap::new();
            for (key, value) in &s.inputs {
                if !spec.inputs.iter().any(|i| i.name == key.get_ref()) {
                    return Err(Diagnostic::new(format!(
                        "kind {} has no input `{}`",
                        spec.name,
                        key.get_ref()
                    ))
                    .at(at(key.span()))
                    .help(suggest::help(
                        key.get_ref(),
                        spec.inputs.iter().map(|i| i.name),
                    ))
                    .into());
                }
                inputs.insert(key.get_ref().clone(), resolve(value)?);
            }
            if let Some(missing) = spec
                .inputs
                .iter()
                .find(|i| i.required && !inputs.contains_key(i.name))
            {
                return Err(Diagnostic::new(format!(
                    "stage `{}` lacks the input `{}` ({})",
                    s.name.get_ref(),
                    missing.name,
                    missing.about
                ))
                .at(at(s.name.span()))
                .help(format!("add `inputs.{} = \"...\"` to the stage: a path, `data:NAME` or `@STAGE.OUTPUT`", missing.name))
                .into());
            }
            let params_from = match &s.params_from {
                None => None,
                Some(value) => {
                    let r = resolve(value)?;
                    if !matches!(r, InputRef::Output { .. }) {
                        return Err(Diagnostic::new("params_from must name a stage output")
                            .at(at(value.span()))
                            .help("write it as `@STAGE.OUTPUT`, for example `params_from = \"@tune.best_params\"`")
                            .into());
                    }
                    Some(r)
                }
            };
            let mut raw_params = s
                .params
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default();
            if let (Some(device), Some(param)) = (&raw.pipeline.device, kind.device_param()) {
                default_param(&mut raw_params, param, device.get_ref());
            }
            let params = kind.params(&raw_params).map_err(|e| {
                let span = s.params.as_ref().map_or(s.kind.span(), Spanned::span);
                let offset = e
                    .key
                    .as_deref()
                    .and_then(|k| find_key(&text[span.clone()], k))
                    .map_or(span.start, |o| span.start + o);
                let what = match &e.key {
                    Some(k)
                        if !e.message.contains(&format!("`{k}`"))
                            && !e.message.starts_with("params.") =>
                    {
                        format!("params.{k}: {}", e.message)
                    }
                    _ => e.message.clone(),
                };
                let mut d = Diagnostic::new(format!("stage `{}`: {what}", s.name.get_ref()))
                    .at(at(offset..offset));
                d.help = e.help.clone();
                d
            })?;
            let wired: Vec<&str> = inputs.keys().map(String::as_str).collect();
            // With `params_from` the params are only known once upstream has run; `resolve`
            // checks them then.
            if s.params_from.is_none()
                && let Err(message) = kind.check_inputs(&wired, &params)
            {
                return Err(
                    Diagnostic::new(format!("stage `{}`: {message}", s.name.get_ref()))
                        .at(at(s.name.span()))
                        .help(format!(
                            "`covseg kinds` lists the inputs of kind {}",
                            spec.name
                        ))
                        .into(),
                );
            }
            let declared = s.resources.clone().unwrap_or_default();
            let job = crate::pipeline::executor::overrides(&declared, &at, at(s.name.span()))?;
            let resources = Resources {
                gpu: declared.gpu.unwrap_or(spec.resources.gpu),
                cpu: declared
                    .cpu
                    .unwrap_or(spec.resources.cpu)
                    .clamp(1, limits.cpu),
            };
            if resources.gpu > limits.gpu {
                return Err(Diagnostic::new(format!(
                    "stage `{}` asks for {} GPU(s) but [resources] allows {}",
                    s.name.get_ref(),
                    resources.gpu,
                    limits.gpu
                ))
                .at(at(s.name.span()))
                .help("raise `gpu` under [resources] or lower the stage's `resources.gpu`")
                .into());
            }
            stages.push(Stage {
                name: s.name.get_ref().clone(),
                kind: *kind,
                inputs,
                raw_params,
                params,
                params_from,
                resources,
                job,
                line: lines.line_col(stage.span().start).0,
            });
        }
        if stages.is_empty() {
            return Err(Diagnostic::new("the pipeline declares no stages")
                .at(Location { file: path.to_owned(), line: None })
                .help("add a `[[stage]]` table with `name` and `kind`; `covseg kinds` lists the kinds")
                .into());
        }
        let executor = crate::pipeline::executor::parse(
            raw.executor,
            &registry.names().collect::<Vec<_>>(),
            &at,
        )?;
        let cache_dir = dir.join(raw.pipeline.cache.as_deref().unwrap_or("cache"));
        let outputs_dir = match raw.pipeline.outputs.as_deref() {
            Some("") => None,
            written => Some(dir.join(written.unwrap_or("outputs"))),
        };
        let name = raw.pipeline.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "pipeline".into(), |s| s.to_string_lossy().into_owned())
        });
        let index = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let pipeline = Self {
            index,
            path: path.to_owned(),
            dir,
            name,
            cache_dir,
            outputs_dir,
            seed: raw.pipeline.seed.unwrap_or(0),
            device,
            limits,
            executor,
            data_hint: raw.data.hint,
            stages,
            text,
        };
        Ok(pipeline)
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.index_of(name).map(|i| &self.stages[i])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The location of a stage's table, for messages.
    pub fn location(&self, stage: &Stage) -> Location {
        Location {
            file: self.path.clone(),
            line: Some((stage.line, 1)),
        }
    }

    /// A `--stage` argument checked against the stages, with a suggestion when misspelt.
    pub fn require_stage(&self, name: &str) -> Result<usize> {
        self.index_of(name).ok_or_else(|| {
            Diagnostic::new(format!(
                "no stage named `{name}` in {}",
                self.path.display()
            ))
            .help(suggest::help(
                name,
                self.stages.iter().map(|s| s.name.as_str()),
            ))
            .into()
        })
    }

    /// The source text, for tools that quote it.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Sets the param at a dotted path (`train.device`) unless the table already has it: how the
/// pipeline's settings become defaults of the stages that read them.
fn default_param(table: &mut toml::Table, path: &str, value: &str) {
    let mut table = table;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            table
                .entry(key)
                .or_insert_with(|| toml::Value::String(value.to_owned()));
            return;
        }
        let next = table
            .entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(next) = next else {
            // Not a table: the kind's own validation reports it.
            return;
        };
        table = next;
    }
}

/// Finds `key =` inside a TOML fragment, for pointing at a param.
fn find_key(fragment: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = fragment[from..].find(key) {
        let start = from + i;
        let before_ok = start == 0
            || !fragment.as_bytes()[start - 1].is_ascii_alphanumeric()
                && fragment.as_bytes()[start - 1] != b'_';
        let after = fragment[start + key.len()..].trim_start();
        if before_ok && (after.starts_with('=') || after.starts_with('.')) {
            return Some(start);
        }
        from = start + key.len();
    }
    None
}

/// Rewrites serde's "unknown field" message into ours, with a suggestion.
fn toml_diagnostic(message: &str) -> Diagnostic {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return Diagnostic::new(format!("unknown key `{field}`"))
            .help(suggest::help(field, expected.iter().copied()));
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return Diagnostic::new(format!("missing key `{field}`"))
            .help(format!("add `{field} = ...` to this table"));
    }
    Diagnostic::new(format!("invalid TOML: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 2), (1, 3));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn the_pipeline_device_reaches_train_evaluate_predict_and_tune_trials() {
        let text = r#"
[pipeline]
device = "cpu"

[[stage]]
name = "train"
kind = "train"
inputs = { shards = "s", val_images = "v", val_labels = "l", preprocessing = "p" }

[[stage]]
name = "own"
kind = "train"
inputs = { shards = "s", val_images = "v", val_labels = "l", preprocessing = "p" }
params = { device = "auto" }

[[stage]]
name = "tune"
kind = "tune"
inputs = { shards = "s", val_images = "v", val_labels = "l", preprocessing = "p" }
params = { space = { lr = { log_uniform = [1e-4, 1e-2] } } }

[[stage]]
name = "phantoms"
kind = "synth"
"#;
        let registry = crate::adapters::registry();
        let pipeline = Pipeline::parse(Path::new("p.toml"), text.to_owned(), &registry).unwrap();
        let params = |name: &str| &pipeline.stage(name).unwrap().params;
        assert_eq!(params("train")["device"], "cpu");
        assert_eq!(params("own")["device"], "auto", "a stage's own value wins");
        let own = pipeline.stage("own").unwrap();
        let parts =
            crate::pipeline::kind::key_parts(own.kind, own.params.clone(), 0, Default::default());
        assert_eq!(
            parts.device.as_deref(),
            Some(covseg_stages::training::device_class(
                covseg_stages::training::DeviceChoice::Auto
            )),
            "auto is keyed on what it resolves to here"
        );
        assert_eq!(params("tune")["train"]["device"], "cpu");
        assert!(params("phantoms").get("device").is_none());
        let stage = pipeline.stage("train").unwrap();
        let parts = crate::pipeline::kind::key_parts(
            stage.kind,
            stage.params.clone(),
            0,
            Default::default(),
        );
        assert_eq!(parts.device.as_deref(), Some("cpu"));
        let synth = pipeline.stage("phantoms").unwrap();
        let parts = crate::pipeline::kind::key_parts(
            synth.kind,
            synth.params.clone(),
            0,
            Default::default(),
        );
        assert_eq!(parts.device, None, "kinds without a device keep their keys");
    }

    #[test]
    fn finds_keys_not_substrings() {
        assert_eq!(find_key("{ nlr = 1, lr = 2 }", "lr"), Some(11));
        assert_eq!(find_key("lr_max = 1\nlr = 2", "lr"), Some(11));
    }
}
