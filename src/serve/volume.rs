//! `POST /v1/volume` (and `/invocations` with a volume's `Content-Type`): a whole CT volume, as
//! a `.nii[.gz]` or a zipped DICOM series, segmented as `predict` segments it. The answer is a
//! zip of the label NIfTI (the input's own grid and affine), the report JSON and its HTML page;
//! `Accept: application/json` gives the report alone, `application/gzip` the label NIfTI alone.
//!
//! Bounded like every route: the upload by `--max-volume-body`, the volume by
//! `--max-volume-slices` and `--max-side` (checked from headers before anything is inflated), the
//! whole request by `--volume-timeout`, and one volume at a time. The volume goes to the model in
//! batches of `--max-batch` slices through the shared queue, so slice requests keep being served
//! in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use covseg_stages::serving::batcher::{Inferred, Job, JobError, Rejected, Reply};
use covseg_stages::serving::volume::{self, VolumeFormat};
use covseg_stages::serving::{RequestError, decode::Format};
use serde::Serialize;

use super::error::ApiError;
use super::infer::{self, Arrived};
use super::routes::NOTICE;
use super::state::AppState;

/// The answer formats, by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answering {
    /// The label NIfTI, the report JSON and HTML, zipped.
    Zip,
    /// The report alone.
    Json,
    /// The label NIfTI alone (`.nii.gz`).
    Nifti,
}

fn answering(headers: &HeaderMap) -> Result<Answering, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    for item in accept.split(',') {
        let essence = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/zip" | "application/*" | "*/*" | "" => return Ok(Answering::Zip),
            "application/json" => return Ok(Answering::Json),
            "application/gzip" | "application/x-gzip" | "application/x-nifti" => {
                return Ok(Answering::Nifti);
            }
            _ => {}
        }
    }
    Err(RequestError::NotAcceptable(
        "a volume's answer is application/zip (labels .nii.gz, report .json and .html), \
         application/json (the report) or application/gzip (the labels .nii.gz)"
            .into(),
    )
    .into())
}

/// The format a request's `Content-Type` declares: `None` to sniff the bytes.
pub fn declared(headers: &HeaderMap) -> Result<Option<VolumeFormat>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("?");
    if let Some(format) = VolumeFormat::from_content_type(text) {
        return Ok(Some(format));
    }
    match Format::from_content_type(text) {
        Some(None) => Ok(None),
        _ => Err(RequestError::Unsupported(format!(
            "Content-Type `{text}` is not a volume; send application/gzip (.nii.gz), \
             application/x-nifti (.nii) or application/zip (a DICOM series)"
        ))
        .into()),
    }
}

/// `?name=` of a query string.
fn name_of(query: Option<&str>) -> String {
    let given = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("name="));
    volume::safe_name(given)
}

#[derive(Serialize)]
struct VolumeTimings {
    decode_ms: f64,
    infer_ms: f64,
    total_ms: f64,
}

#[derive(Serialize)]
struct ReportAnswer<'a> {
    model_version: &'a str,
    notice: &'static str,
    report: covseg_stages::volume::report::VolumeReport,
    timings: VolumeTimings,
}

/// Set when the request is gone (its future dropped: a timeout or a disconnect), so batches
/// not yet run are skipped.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct ChannelReply {
    tx: std::sync::mpsc::Sender<Result<Inferred, JobError>>,
    gone: Arc<AtomicBool>,
}

impl Reply for ChannelReply {
    fn is_closed(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
    fn send(self: Box<Self>, result: Result<Inferred, JobError>) {
        let _ = self.tx.send(result);
    }
}

/// Segments one uploaded volume.
pub async fn handle(
    state: Arc<AppState>,
    arrived: Arrived,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = arrived.0;
    let deadline = started + state.limits.volume_timeout;
    let refusal = infer::admit(&state)
        .and_then(|()| answering(&headers))
        .and_then(|a| declared(&headers).map(|d| (a, d)));
    let (format, declared) = match refusal {
        Ok(ok) => ok,
        Err(refused) => {
            infer::discard_body(&state, body).await;
            return Err(refused);
        }
    };
    let Some(_slot) = state.volume_slot() else {
        state.metrics.reject("volume_busy");
        infer::discard_body(&state, body).await;
        return Err(ApiError::unavailable(
            "a volume is being segmented; volumes go one at a time, retry shortly",
        ));
    };
    let bytes = infer::read_limited(
        &state,
        &headers,
        body,
        (state.limits.max_volume_body, "--max-volume-body"),
        state.limits.volume_timeout,
        "send one series, or raise --max-volume-body",
    )
    .await?;
    let name = name_of(query.as_deref());
    let gone = Arc::new(AtomicBool::new(false));
    let _abandoned = Abandoned(Arc::clone(&gone));
    let work = {
        let state = Arc::clone(&state);
        tokio::task::spawn_blocking(move || {
            segment(&state, &bytes, declared, &name, deadline, &gone)
        })
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let (files, report, decode_seconds, infer_seconds) =
        match tokio::time::timeout(left, work).await {
            Err(_) => {
                state.metrics.reject("timeout");
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the volume was not segmented within --volume-timeout",
                ));
            }
            Ok(Err(e)) => return Err(ApiError::internal(format!("segmentation failed: {e}"))),
            Ok(Ok(result)) => result?,
        };
    let timings = VolumeTimings {
        decode_ms: decode_seconds * 1e3,
        infer_ms: infer_seconds * 1e3,
        total_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    let stem = report.volume.clone();
    Ok(match format {
        Answering::Json => axum::Json(ReportAnswer {
            model_version: &state.version,
            notice: NOTICE,
            report,
            timings,
        })
        .into_response(),
        Answering::Nifti => {
            let labels = files.into_iter().next().expect("the label NIfTI first").1;
            attachment("application/gzip", &format!("{stem}.nii.gz"), labels)
        }
        Answering::Zip => {
            let zipped = tokio::task::spawn_blocking(move || volume::zip_files(&files))
                .await
                .map_err(|e| ApiError::internal(format!("zipping failed: {e}")))?;
            attachment("application/zip", &format!("{stem}.zip"), zipped)
        }
    })
}

fn attachment(content_type: &'static str, file: &str, bytes: Vec<u8>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

type Files = Vec<(String, Vec<u8>)>;
type Segmented = (Files, covseg_stages::volume::report::VolumeReport, f64, f64);

/// Decode, the model batch by batch through the queue, the label map and the report (on a
/// blocking thread).
fn segment(
    state: &AppState,
    bytes: &[u8],
    declared: Option<VolumeFormat>,
    name: &str,
    deadline: Instant,
    gone: &Arc<AtomicBool>,
) -> Result<Segmented, ApiError> {
    let began = Instant::now();
    let volume = volume::decode(bytes, declared, name, &state.limits.volume).map_err(|e| {
        state.metrics.reject("invalid_volume");
        ApiError::from(e)
    })?;
    for w in &volume.warnings {
        tracing::warn!(volume = %volume.name, "{w}");
    }
    let decode_seconds = began.elapsed().as_secs_f64();
    let mut infer_seconds = 0.0;
    let chunk = state.limits.max_batch;
    let (labels, report) = volume::segment(&state.recipe, &volume, chunk, |inputs| {
        let (tx, rx) = std::sync::mpsc::channel();
        let job = Job {
            inputs,
            deadline,
            reply: Box::new(ChannelReply {
                tx,
                gone: Arc::clone(gone),
            }),
        };
        state.batcher.submit(job).map_err(|why| match why {
            Rejected::Full => {
                state.metrics.reject("queue_full");
                ApiError::unavailable("the model queue is full; retry shortly")
            }
            Rejected::Closed => {
                state.metrics.reject("draining");
                ApiError::unavailable("the server is shutting down")
            }
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        let inferred = match rx.recv_timeout(left) {
            Err(_) | Ok(Err(JobError::Expired)) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the volume was not segmented within --volume-timeout",
                ));
            }
            Ok(Err(e)) => return Err(ApiError::internal(e.to_string())),
            Ok(Ok(inferred)) => inferred,
        };
        state.metrics.queue_seconds.observe(inferred.queue_seconds);
        if inferred.first_in_batch {
            state.metrics.infer_seconds.observe(inferred.infer_seconds);
            state
                .metrics
                .batch_size
                .observe(inferred.batch_slices as f64);
        }
        infer_seconds += inferred.infer_seconds;
        Ok(inferred.probabilities)
    })?;
    tracing::info!(
        volume = %volume.name,
        slices = volume.shape()[2],
        involvement = report.involvement_percent.whole,
        grade = %report.mosmed_grade,
        "volume segmented"
    );
    let files = volume::answer_files(&volume, &labels, &report)
        .map_err(|e| ApiError::internal(format!("cannot write the answer: {e}")))?;
    Ok((files, report, decode_seconds, infer_seconds))
}
