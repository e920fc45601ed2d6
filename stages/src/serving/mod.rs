//! The serving core: what `covseg serve` does between the HTTP layer and the model, with no HTTP
//! in it.
//!
//! - [`decode`] turns an uploaded body (PNG, JPEG or `.npy`) into slices, with strict limits that
//!   are checked before anything is allocated;
//! - [`batcher`] is the one thread that owns the model: a bounded queue, micro-batching, deadlines;
//! - [`segment`] prepares slices for the model and turns its probabilities into labels, exactly as
//!   `predict` does, so the endpoint and `predict` agree bit for bit;
//! - [`summary`] and [`encode`] give the answer: per-class counts and areas, label PNGs, `.npy`
//!   masks;
//! - [`volume`] reads an uploaded CT volume (NIfTI or a zipped DICOM series), runs it through
//!   the model slice by slice as `predict` does, and packs the label NIfTI and the report.

pub mod batcher;
pub mod decode;
pub mod encode;
pub mod segment;
pub mod summary;
pub mod volume;

/// Why a request's content cannot be served; the HTTP layer maps each to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A media type the endpoint does not take (415).
    #[error("{0}")]
    Unsupported(String),
    /// Content that is damaged, too large in its dimensions, or of the wrong shape (400).
    #[error("{0}")]
    Invalid(String),
    /// An answer format the request's content cannot have (406).
    #[error("{0}")]
    NotAcceptable(String),
}

/// The format of a body: what its first bytes show (`sniffed`), which must agree with what its
/// `Content-Type` declared, if anything. `unsupported` is the refusal when neither says.
pub(crate) fn resolve_format<F: Copy + PartialEq>(
    declared: Option<F>,
    sniffed: Option<F>,
    name: impl Fn(F) -> &'static str,
    unsupported: &str,
) -> Result<F, RequestError> {
    match (declared, sniffed) {
        (Some(d), Some(s)) if d != s => Err(RequestError::Invalid(format!(
            "the body was declared {} but its bytes are {}",
            name(d),
            name(s)
        ))),
        (_, Some(s)) => Ok(s),
        (Some(d), None) => Err(RequestError::Invalid(format!(
            "the body was declared {} but does not start like one (damaged or empty)",
            name(d)
        ))),
        (None, None) => Err(RequestError::Unsupported(unsupported.into())),
    }
}
