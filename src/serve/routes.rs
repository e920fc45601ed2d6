//! The routes: SageMaker's `/ping` and `/invocations`, the Open Inference Protocol's `/v2` set,
//! the viewer's `/v1/segment` and `/`, `/metrics` and `/openapi.json`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, FromRequest, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use covseg_stages::serving::summary::{self, SliceSummary};
use covseg_stages::serving::{RequestError, decode::Format, encode};
use serde::Serialize;

use super::error::ApiError;
use super::infer::{self, Answer, Input, Timings};
use super::oip;
use super::state::AppState;

pub const MODEL: &str = "covseg";
const VIEWER_HTML: &str = include_str!("assets/viewer.html");
const VIEWER_JS: &str = include_str!("assets/viewer.js");
const OPENAPI: &str = include_str!("assets/openapi.json");
pub const NOTICE: &str = "research software, not a medical device";

/// The application: every route, with its limits, metrics and the model-version header.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = (state.limits.timeout + state.limits.body_timeout)
        .max(state.limits.volume_timeout)
        + std::time::Duration::from_secs(1);
    Router::new()
        .route("/", get(viewer))
        .route("/viewer.js", get(viewer_js))
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .route("/v1/segment", post(segment_multipart))
        .route("/v1/volume", post(volume))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/infer", post(oip_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(oip_infer),
        )
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        // Bodies are read under --max-body by the handlers themselves (413 JSON); axum's own
        // 2 MiB default would cut multipart uploads short.
        .layer(axum::extract::DefaultBodyLimit::disable())
        // A backstop: handlers answer their own 504 (JSON) at the request timeout.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("internal error (a bug: please report it)").into_response()
            },
        ))
        // Outermost, so timeouts and caught panics are counted and carry the version too.
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

/// Counts each request by route and status, and names the model version on every answer.
async fn observe(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    request
        .extensions_mut()
        .insert(infer::Arrived(std::time::Instant::now()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    // The route and the outcome only: never the body, the query or the pixels.
    tracing::debug!(
        "{method} {route} → {} in {:.1} ms",
        response.status().as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    );
    state
        .metrics
        .requests
        .get_or_create(&super::metrics::RouteCode {
            route,
            code: response.status().as_u16(),
        })
        .inc();
    if let Ok(v) = HeaderValue::from_str(&state.version) {
        response.headers_mut().insert("x-model-version", v);
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see /openapi.json")
}

async fn viewer() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        VIEWER_HTML,
    )
        .into_response()
}

async fn viewer_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        VIEWER_JS,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn ping(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": "covseg",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// Checks the `{model}` and optional `{version}` of an OIP path.
fn check_model(state: &AppState, params: &HashMap<String, String>) -> Result<(), ApiError> {
    let model = params.get("model").map_or("", String::as_str);
    if model != MODEL {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no model `{model}`; this server has `{MODEL}`"),
        ));
    }
    if let Some(version) = params.get("version")
        && version != &state.version
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no version `{version}`; this server has {}", state.version),
        ));
    }
    Ok(())
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_model(&state, &params)?;
    let pre = &state.recipe.preprocessing;
    Ok(axum::Json(serde_json::json!({
        "name": MODEL,
        "versions": [state.version],
        "platform": "burn",
        "inputs": [{
            "name": "image",
            "datatype": "FP32",
            "shape": [-1, -1, -1],
            "parameters": {
                "content": match pre.source {
                    covseg_stages::data::intensity::SourceKind::Hu => "HU; also FP64, INT16, INT32",
                    covseg_stages::data::intensity::SourceKind::EightBit => "8-bit grey; send UINT8",
                },
            },
        }],
        "outputs": [{
            "name": "labels",
            "datatype": "UINT8",
            "shape": [-1, -1, -1],
            "parameters": { "labels": "0 background, 1 GGO, 2 consolidation" },
        }],
        "parameters": {
            "model_size": pre.size,
            "thresholds": { "ggo": state.recipe.thresholds.ggo, "consolidation": state.recipe.thresholds.consolidation },
        },
    }))
    .into_response())
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_model(&state, &params)?;
    Ok(ready(State(state)).await)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.queue_depth.set(state.batcher.depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The answer formats, by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answering {
    Png,
    Npy,
    Json,
}

/// The first acceptable type the client lists; a single slice defaults to a label PNG, several
/// to `.npy` masks.
fn answering(headers: &HeaderMap, slices: usize) -> Result<Answering, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let default = if slices == 1 {
        Answering::Png
    } else {
        Answering::Npy
    };
    for item in accept.split(',') {
        let essence = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let chosen = match essence.as_str() {
            "image/png" | "image/*" => Answering::Png,
            "application/x-npy" | "application/npy" | "application/octet-stream" => Answering::Npy,
            "application/json" => Answering::Json,
            "*/*" | "" => default,
            _ => continue,
        };
        if chosen == Answering::Png && slices > 1 {
            if essence == "image/png" {
                return Err(RequestError::NotAcceptable(format!(
                    "{slices} slices cannot be one PNG; accept application/x-npy or application/json"
                ))
                .into());
            }
            continue;
        }
        return Ok(chosen);
    }
    Err(RequestError::NotAcceptable(
        "answers are image/png (labels 0/1/2), application/x-npy (masks) or application/json"
            .into(),
    )
    .into())
}

/// `?spacing=0.7` or `?spacing=0.7,0.7`, else the server's default.
fn spacing(state: &AppState, query: Option<&str>) -> Result<Option<(f64, f64)>, ApiError> {
    let given = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "spacing").then(|| v.replace("%2C", ",").replace("%2c", ","))
        });
    match given {
        Some(text) => summary::parse_spacing(&text)
            .map(Some)
            .map_err(ApiError::bad_request),
        None => Ok(state.spacing),
    }
}

#[derive(Serialize)]
struct Summaries<'a> {
    model_version: &'a str,
    notice: &'static str,
    slices: Vec<SliceSummary>,
    timings: Timings,
}

fn summaries(answer: &Answer, spacing: Option<(f64, f64)>) -> Vec<SliceSummary> {
    answer
        .segmented
        .iter()
        .map(|s| summary::summarise(&s.labels, spacing))
        .collect()
}

/// `POST /v1/volume`: a `.nii[.gz]` or a zipped DICOM series; see [`super::volume`].
async fn volume(
    State(state): State<Arc<AppState>>,
    Extension(arrived): Extension<infer::Arrived>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::volume::handle(state, arrived, query, headers, body).await
}

/// `POST /invocations`: a PNG, JPEG or `.npy` body; labels, masks or a summary back. A body
/// declared as a volume (application/gzip, application/x-nifti, application/zip) is one, as on
/// `/v1/volume`.
async fn invocations(
    State(state): State<Arc<AppState>>,
    Extension(arrived): Extension<infer::Arrived>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let volume_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(covseg_stages::serving::volume::VolumeFormat::from_content_type);
    if volume_type.is_some() {
        return super::volume::handle(state, arrived, query, headers, body).await;
    }
    // Refusals that need no decoding come first: overload, and an Accept nothing satisfies.
    if let Err(refused) = infer::admit(&state).and_then(|()| answering(&headers, 1).map(|_| ())) {
        infer::discard_body(&state, body).await;
        return Err(refused);
    }
    let declared = match headers.get(header::CONTENT_TYPE) {
        None => Ok(None),
        Some(v) => Format::from_content_type(v.to_str().unwrap_or("?")).ok_or_else(|| {
            state.metrics.reject("unsupported_media_type");
            ApiError::from(RequestError::Unsupported(format!(
                "Content-Type `{}` is not taken; send image/png, image/jpeg or application/x-npy (a slice), or application/gzip or application/zip (a volume)",
                v.to_str().unwrap_or("?")
            )))
        }),
    };
    let (declared, spacing) = match (declared, spacing(&state, query.as_deref())) {
        (Ok(declared), Ok(spacing)) => (declared, spacing),
        (Err(e), _) | (_, Err(e)) => {
            infer::discard_body(&state, body).await;
            return Err(e);
        }
    };
    let bytes = infer::read_body(&state, &headers, body).await?;
    let answer = infer::segment(&state, Input::Upload(bytes, declared), arrived).await?;
    let format = answering(&headers, answer.segmented.len())?;
    let version = state.version.clone();
    tokio::task::spawn_blocking(move || encoded(format, &answer, spacing, &version))
        .await
        .map_err(|e| ApiError::internal(format!("encoding failed: {e}")))
}

/// The answer in the negotiated format (on the blocking pool: PNG and `.npy` encoding).
fn encoded(
    format: Answering,
    answer: &Answer,
    spacing: Option<(f64, f64)>,
    version: &str,
) -> Response {
    match format {
        Answering::Png => (
            [(header::CONTENT_TYPE, "image/png")],
            encode::label_png(&answer.segmented[0].labels),
        )
            .into_response(),
        Answering::Npy => (
            [(header::CONTENT_TYPE, "application/x-npy")],
            encode::masks_npy(&answer.segmented),
        )
            .into_response(),
        Answering::Json => axum::Json(Summaries {
            model_version: version,
            notice: NOTICE,
            slices: summaries(answer, spacing),
            timings: answer.timings,
        })
        .into_response(),
    }
}

#[derive(Serialize)]
struct ViewerSlice {
    #[serde(flatten)]
    summary: SliceSummary,
    /// The slice as shown (the bundle's first window), a grey PNG data URL.
    image: String,
    /// Labels 0/1/2, a grey PNG data URL.
    labels: String,
}

#[derive(Serialize)]
struct ViewerAnswer<'a> {
    model_version: &'a str,
    notice: &'static str,
    slices: Vec<ViewerSlice>,
    timings: Timings,
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// `POST /v1/segment`: multipart `file` (PNG, JPEG or `.npy`) and optional `spacing`; the
/// viewer's route. Answers the shown slices and labels as PNG data URLs with their summaries.
async fn segment_multipart(
    State(state): State<Arc<AppState>>,
    Extension(arrived): Extension<infer::Arrived>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let multipart_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let admitted = infer::admit(&state).and_then(|()| {
        if multipart_type {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send multipart/form-data with a `file` field (or POST the file to /invocations)",
            ))
        }
    });
    if let Err(refused) = admitted {
        infer::discard_body(&state, body).await;
        return Err(refused);
    }
    let bytes = infer::read_body(&state, &parts.headers, body).await?;
    let request = Request::from_parts(parts, Body::from(bytes));
    let mut multipart = axum::extract::Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("expected multipart/form-data: {e}")))?;
    let mut file = None;
    let mut spacing_text = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
    {
        match field.name() {
            Some("file") => {
                file =
                    Some(field.bytes().await.map_err(|e| {
                        ApiError::bad_request(format!("malformed multipart body: {e}"))
                    })?)
            }
            Some("spacing") => {
                let text = field
                    .text()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
                if !text.trim().is_empty() {
                    spacing_text = Some(text);
                }
            }
            _ => {}
        }
    }
    let file = file.ok_or_else(|| ApiError::bad_request("no `file` field in the form"))?;
    let spacing = match spacing_text {
        Some(t) => Some(summary::parse_spacing(&t).map_err(ApiError::bad_request)?),
        None => state.spacing,
    };
    let answer = infer::segment(&state, Input::Upload(file, None), arrived).await?;
    let state2 = Arc::clone(&state);
    let slices = tokio::task::spawn_blocking(move || {
        answer
            .slices
            .slices
            .iter()
            .zip(&answer.segmented)
            .map(|(slice, s)| ViewerSlice {
                summary: summary::summarise(&s.labels, spacing),
                image: data_url(&encode::display_png(&state2.recipe.display(slice))),
                labels: data_url(&encode::label_png(&s.labels)),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(ViewerAnswer {
        model_version: &state.version,
        notice: NOTICE,
        slices,
        timings: answer.timings,
    })
    .into_response())
}

/// `POST /v2/models/covseg[/versions/V]/infer`: JSON tensors, or the binary extension.
async fn oip_infer(
    State(state): State<Arc<AppState>>,
    Extension(arrived): Extension<infer::Arrived>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Err(refused) = check_model(&state, &params).and_then(|()| infer::admit(&state)) {
        infer::discard_body(&state, body).await;
        return Err(refused);
    }
    let bytes = infer::read_body(&state, &headers, body).await?;
    // Parsing a JSON tensor of millions of numbers is CPU work: off the async threads.
    let limits = state.limits.decode;
    let (request, slices) = tokio::task::spawn_blocking(move || {
        oip::parse(&bytes, &headers, &limits).map(oip::Parsed::take_slices)
    })
    .await
    .map_err(|e| ApiError::internal(format!("parsing failed: {e}")))??;
    let answer = infer::segment(&state, Input::Slices(slices), arrived).await?;
    let version = state.version.clone();
    tokio::task::spawn_blocking(move || oip::respond(&request, &answer, MODEL, &version))
        .await
        .map_err(|e| ApiError::internal(format!("encoding failed: {e}")))
}
