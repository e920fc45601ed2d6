//! The error type of the domain crate: every variant names the file or field it is about, so the
//! engine can print one clear message without knowing what a CT slice is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `.npy` file could not be read or written.
    #[error("{}: {message}", path.display())]
    Npy { path: PathBuf, message: String },
    /// The data is readable but not what the stage needs (shape, dtype, count, values).
    #[error("{}: {message}", path.display())]
    InvalidData { path: PathBuf, message: String },
    /// A weights file cannot be read, or does not fit the network (missing tensors, wrong layout).
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    /// A tensor of a weights file has another shape than the parameter it loads into.
    #[error("{}: tensor {tensor}: the network expects shape {expected:?}, the file has {found:?}", path.display())]
    WeightShape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A parameter is out of its range.
    #[error("params.{field}: {message}")]
    InvalidParam {
        field: &'static str,
        message: String,
    },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn invalid_data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidData {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn invalid_param(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidParam {
            field,
            message: message.into(),
        }
    }

    /// Whether the error is the user's input (bad data or params) rather than a failure of the
    /// machine; the command line maps the first to exit code 2.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidData { .. }
                | Self::InvalidParam { .. }
                | Self::Npy { .. }
                | Self::Weights { .. }
                | Self::WeightShape { .. }
        )
    }
}
