//! How a stage names what it reads: `@STAGE.OUTPUT` (another stage's output), `data:NAME` (a file
//! declared under `[data.files]`), or a path relative to the pipeline file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::Diagnostic;
use crate::pipeline::suggest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    Output {
        stage: String,
        output: String,
    },
    /// An external file or folder: as written, and resolved against the pipeline's folder.
    External {
        written: String,
        path: PathBuf,
    },
}

impl InputRef {
    pub fn parse(
        text: &str,
        dir: &Path,
        data_root: &Path,
        data: &BTreeMap<String, String>,
    ) -> Result<Self, Diagnostic> {
        if let Some(rest) = text.strip_prefix('@') {
            let Some((stage, output)) = rest
                .split_once('.')
                .filter(|(s, o)| !s.is_empty() && !o.is_empty())
            else {
                return Err(
                    Diagnostic::new(format!("`{text}` is not a stage output reference"))
                        .help("write `@STAGE.OUTPUT`, for example `@split.manifest`"),
                );
            };
            return Ok(Self::Output {
                stage: stage.to_owned(),
                output: output.to_owned(),
            });
        }
        if let Some(name) = text.strip_prefix("data:") {
            let Some(file) = data.get(name) else {
                return Err(
                    Diagnostic::new(format!("`{text}` names no entry of [data.files]"))
                        .help(suggest::help(name, data.keys().map(String::as_str))),
                );
            };
            let path = data_root.join(file);
            return Ok(Self::External {
                written: display(&path),
                path,
            });
        }
        if text.is_empty() {
            return Err(Diagnostic::new("empty input path")
                .help("write a path, `data:NAME` or `@STAGE.OUTPUT`"));
        }
        let path = dir.join(text);
        Ok(Self::External {
            written: display(&path),
            path,
        })
    }

    pub fn upstream(&self) -> Option<&str> {
        match self {
            Self::Output { stage, .. } => Some(stage),
            Self::External { .. } => None,
        }
    }
}

/// Paths in messages and keys are shown without a leading `./`.
fn display(path: &Path) -> String {
    let p = path.strip_prefix(".").unwrap_or(path);
    p.to_string_lossy().into_owned()
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Output { stage, output } => write!(f, "@{stage}.{output}"),
            Self::External { written, .. } => f.write_str(written),
        }
    }
}
