//! Errors of the engine and how each maps to an exit code: 1 when a stage failed, 2 when the
//! command line, the pipeline file or an input is wrong.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in a file a problem is, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// One user-facing problem: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Option<Location>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            location: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {help}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file, the command line or an input is wrong; nothing was run.
    #[error("{0}")]
    Invalid(Diagnostic),
    /// An operating-system error on a file of the cache or an input.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A cache file is not what covseg wrote (edited by hand or damaged).
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// One or more stages failed: (stage, why) each; the run record keeps them too.
    #[error("{}", failures_text(failures))]
    StagesFailed {
        failures: Vec<(String, String)>,
        input_error: bool,
    },
    /// `cache verify` found damaged entries.
    #[error("{0} damaged cache entr(y/ies) found")]
    Damaged(usize),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid(diagnostic: Diagnostic) -> Self {
        Self::Invalid(diagnostic)
    }

    /// The documented exit code: 0 success, 1 a stage failed (or damage was found), 2 a usage,
    /// configuration or input error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Invalid(_) => 2,
            Self::StagesFailed {
                input_error: true, ..
            } => 2,
            Self::StagesFailed { .. }
            | Self::Damaged(_)
            | Self::Io { .. }
            | Self::Corrupt { .. } => 1,
        }
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Self {
        Self::Invalid(d)
    }
}

fn failures_text(failures: &[(String, String)]) -> String {
    match failures {
        [(stage, why)] => format!("stage `{stage}` failed: {why}"),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|(stage, why)| format!("  {stage}: {why}"))
                .collect();
            format!("{} stages failed:\n{}", many.len(), lines.join("\n"))
        }
    }
}
