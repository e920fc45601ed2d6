//! One request's way through the model: decode and prepare (on the blocking pool), queue, wait
//! for the model thread, turn probabilities into labels. Shared by every inference route.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use covseg_stages::serving::batcher::{Inferred, Job, JobError, Rejected, Reply};
use covseg_stages::serving::decode::{self, Format, Slices};
use covseg_stages::serving::segment::Segmented;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::oneshot;

use super::error::ApiError;
use super::state::AppState;

/// When the request arrived (set by the outermost layer): deadlines count from it.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// What a request brings.
pub enum Input {
    /// An uploaded file; the format from its `Content-Type`, `None` to sniff.
    Upload(Bytes, Option<Format>),
    /// Tensors already decoded (the Open Inference Protocol route).
    Slices(Slices),
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub queue_ms: f64,
    pub infer_ms: f64,
    pub total_ms: f64,
}

pub struct Answer {
    pub slices: Slices,
    pub segmented: Vec<Segmented>,
    pub timings: Timings,
}

struct OneshotReply(oneshot::Sender<Result<Inferred, JobError>>);

impl Reply for OneshotReply {
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn send(self: Box<Self>, result: Result<Inferred, JobError>) {
        let _ = self.0.send(result);
    }
}

/// Refuses work at once when the server cannot take it: not ready, draining, or a full queue.
pub fn admit(state: &AppState) -> Result<(), ApiError> {
    if state.draining() {
        state.metrics.reject("draining");
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    if !state.ready() {
        state.metrics.reject("not_ready");
        return Err(ApiError::unavailable("the model is still loading"));
    }
    if state.batcher.depth() >= state.limits.queue {
        state.metrics.reject("queue_full");
        return Err(ApiError::unavailable(
            "the model queue is full; retry shortly",
        ));
    }
    Ok(())
}

/// Reads and discards what the client sends (up to the body cap, within the body timeout) before a
/// refusal is answered: a server that answers while a body is still arriving and then closes makes
/// the client's kernel see a reset instead of the 503.
pub async fn discard_body(state: &AppState, body: Body) {
    let mut body = http_body_util::Limited::new(body, state.limits.max_body);
    let _ = tokio::time::timeout(state.limits.body_timeout, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// Reads a body of at most `max_body` bytes within the body timeout: 413 beyond it, 408 when
/// the client sends too slowly.
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    read_limited(
        state,
        headers,
        body,
        (state.limits.max_body, "--max-body"),
        state.limits.body_timeout,
        "send one slice, as PNG or int16 .npy",
    )
    .await
}

/// Reads a body of at most `limit.0` bytes (the flag `limit.1` sets it) within `timeout`.
pub async fn read_limited(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: (usize, &str),
    timeout: std::time::Duration,
    hint: &str,
) -> Result<Bytes, ApiError> {
    let (max, flag) = limit;
    let too_large = || {
        state.metrics.reject("too_large");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes (the server's {flag}); {hint}"),
        )
    };
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > max as u64
    {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Segments the slices of `input`.
pub async fn segment(
    state: &Arc<AppState>,
    input: Input,
    arrived: Arrived,
) -> Result<Answer, ApiError> {
    let started = arrived.0;
    let _slot = state.in_flight().ok_or_else(|| {
        state.metrics.reject("busy");
        ApiError::unavailable("too many requests in progress; retry shortly")
    })?;
    admit(state)?;
    let prepared = {
        let state = Arc::clone(state);
        tokio::task::spawn_blocking(move || {
            let slices = match input {
                Input::Upload(bytes, declared) => {
                    decode::decode(&bytes, declared, &state.limits.decode)?
                }
                Input::Slices(slices) => slices,
            };
            let inputs = state.recipe.prepare(&slices)?;
            Ok::<_, ApiError>((slices, inputs))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding failed: {e}")))??
    };
    let (slices, inputs) = prepared;
    let decoded = started.elapsed();
    let (tx, rx) = oneshot::channel();
    let job = Job {
        inputs,
        deadline: started + state.limits.timeout,
        reply: Box::new(OneshotReply(tx)),
    };
    if let Err(why) = state.batcher.submit(job) {
        return Err(match why {
            Rejected::Full => {
                state.metrics.reject("queue_full");
                ApiError::unavailable("the model queue is full; retry shortly")
            }
            Rejected::Closed => {
                state.metrics.reject("draining");
                ApiError::unavailable("the server is shutting down")
            }
        });
    }
    let left = state.limits.timeout.saturating_sub(started.elapsed());
    let inferred = match tokio::time::timeout(left, rx).await {
        Err(_) => {
            state.metrics.reject("timeout");
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the model did not answer within the request timeout",
            ));
        }
        Ok(Err(_)) => return Err(ApiError::internal("the model thread stopped")),
        Ok(Ok(Err(JobError::Expired))) => {
            state.metrics.reject("timeout");
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the request waited past its deadline",
            ));
        }
        Ok(Ok(Err(e))) => return Err(ApiError::internal(e.to_string())),
        Ok(Ok(Ok(inferred))) => inferred,
    };
    state.metrics.queue_seconds.observe(inferred.queue_seconds);
    if inferred.first_in_batch {
        state.metrics.infer_seconds.observe(inferred.infer_seconds);
        state
            .metrics
            .batch_size
            .observe(inferred.batch_slices as f64);
    }
    let (slices, segmented) = {
        let state = Arc::clone(state);
        tokio::task::spawn_blocking(move || {
            let segmented = state.recipe.finish(&slices, &inferred.probabilities);
            (slices, segmented)
        })
        .await
        .map_err(|e| ApiError::internal(format!("post-processing failed: {e}")))?
    };
    Ok(Answer {
        slices,
        segmented,
        timings: Timings {
            decode_ms: decoded.as_secs_f64() * 1e3,
            queue_ms: inferred.queue_seconds * 1e3,
            infer_ms: inferred.infer_seconds * 1e3,
            total_ms: started.elapsed().as_secs_f64() * 1e3,
        },
    })
}
