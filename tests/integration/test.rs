//! A fluent builder that runs the real binary in a temp dir:
//! `Test::new().pipeline(TOML).args(["run"]).status(0).run()`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_covseg");

pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    status: i32,
    env: Vec<(String, std::ffi::OsString)>,
}

pub struct Done {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
}

impl Test {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            status: 0,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pipeline(self, toml: &str) -> Self {
        self.file("pipeline.toml", toml)
    }

    pub fn file(self, name: &str, content: &str) -> Self {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn status(mut self, status: i32) -> Self {
        self.status = status;
        self
    }

    /// An environment variable for every command of this test.
    pub fn env(mut self, name: &str, value: impl Into<std::ffi::OsString>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    pub fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env_remove("COVSEG_LOG");
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs the command and checks its exit status; the test keeps its folder for more commands.
    pub fn run(&mut self) -> Done {
        let output = self.command(&self.args).output().expect("run covseg");
        let done = Done {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            output,
        };
        assert_eq!(
            done.output.status.code(),
            Some(self.status),
            "covseg {:?} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            done.output.status.code(),
            done.stdout,
            done.stderr
        );
        done
    }

    /// Runs more commands in the same folder: `t.then(["plan"]).run()`.
    pub fn then<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, args: I) -> &mut Self {
        self.args = args.into_iter().map(Into::into).collect();
        self.status = 0;
        self
    }

    pub fn expect(&mut self, status: i32) -> &mut Self {
        self.status = status;
        self
    }

    pub fn go(&mut self) -> Done {
        self.run()
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Names of the complete cache entries.
    pub fn objects(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cache().join("objects"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The run records, oldest first.
    pub fn runs(&self) -> Vec<serde_json::Value> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.cache().join("runs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        let mut runs: Vec<serde_json::Value> = paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        runs.sort_by_key(|r| r["started_unix_ms"].as_u64());
        runs
    }

    /// Outcome per stage name in the newest run record.
    pub fn last_outcomes(&self) -> Vec<(String, String)> {
        let runs = self.runs();
        let last = runs.last().expect("a run record");
        last["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The cached file of a stage's output in the newest run.
    pub fn output(&self, stage: &str, file: &str) -> PathBuf {
        let runs = self.runs();
        let last = runs.last().expect("a run record");
        let key = last["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stage)
            .expect("stage in run")["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let entry = self.cache().join("objects").join(key);
        // `out`, or `out.<n>` for a result that replaced an earlier one (`--force`).
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.join("entry.json")).unwrap()).unwrap();
        let out = record["out"].as_str().unwrap_or("out").to_owned();
        entry.join(out).join(file)
    }
}

/// Replaces what varies between machines and runs (temp paths, keys, timings) in command output.
pub fn redact(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words: Vec<String> = Vec::new();
        for word in line.split(' ') {
            let hexlen = word.chars().take_while(|c| c.is_ascii_hexdigit()).count();
            let w = if hexlen == 64 {
                format!("[key]{}", &word[64..])
            } else if hexlen == 12 && word.len() == 12 && word.chars().any(|c| c.is_ascii_digit()) {
                // A short key: 12 hex digits (which may all happen to be decimal digits).
                "[short]".to_owned()
            } else if word.split_once('-').is_some_and(|(a, b)| {
                a.len() == 13
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            }) {
                "[run]".to_owned()
            } else if word.ends_with('s')
                && word[..word.len() - 1].parse::<f64>().is_ok()
                && word.contains('.')
            {
                "[t]s".to_owned()
            } else {
                word.to_owned()
            };
            words.push(w);
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// Two synthetic data stages and a split of the first: the smallest real pipeline.
pub fn pipeline(split_params: &str) -> String {
    format!(
        r#"[pipeline]
name = "tiny"
seed = 7

[[stage]]
name = "phantoms"
kind = "synth"
params = {{ slices = 6, size = 64 }}

[[stage]]
name = "holdout"
kind = "synth"
params = {{ slices = 2, size = 64 }}

[[stage]]
name = "split"
kind = "split"
inputs = {{ medseg_images = "@phantoms.images", medseg_masks = "@phantoms.masks" }}
params = {{ {split_params} }}
"#
    )
}

/// Writes a little-endian float64 `.npy` by hand, for feeding covseg broken data.
pub fn write_f64_npy(path: &Path, shape: &[usize], values: &[f64]) {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The float32 tensors of a safetensors file: name → (shape, values).
pub fn safetensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["dtype"] == "F32")
        .map(|(name, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let [a, b] = [0, 1].map(|i| v["data_offsets"][i].as_u64().unwrap() as usize);
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name.clone(), (shape, values))
        })
        .collect()
}
