//! The Open Inference Protocol (KServe V2) infer request and response, with the binary tensor
//! extension: raw little-endian tensor bytes after a JSON header whose length is in
//! `Inference-Header-Content-Length`.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use covseg_stages::data::intensity::SourceKind;
use covseg_stages::serving::decode::{DecodeLimits, Slices};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::infer::Answer;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A checked infer request.
pub struct Parsed {
    pub id: Option<String>,
    pub slices: Slices,
    pub binary_output: bool,
}

impl Parsed {
    /// The request without its slices (what the answer needs), and the slices.
    pub fn take_slices(mut self) -> (Self, Slices) {
        let source = self.slices.source;
        let slices = std::mem::replace(
            &mut self.slices,
            Slices {
                source,
                slices: Vec::new(),
            },
        );
        (self, slices)
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Parses and checks an infer request: one input tensor `[H,W]`, `[N,H,W]` or `[N,H,W,1]`,
/// UINT8 (8-bit grey) or INT16, INT32, FP32, FP64 (HU); its size is checked against the shape
/// before any slice is built.
pub fn parse(body: &[u8], headers: &HeaderMap, limits: &DecodeLimits) -> Result<Parsed, ApiError> {
    let header_length = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                bad(format!(
                    "Inference-Header-Content-Length must be a byte count within the body ({} bytes)",
                    body.len()
                ))
            })?,
    };
    let (json_part, mut binary) = body.split_at(header_length);
    let request: InferRequest = serde_json::from_slice(json_part).map_err(|e| {
        bad(format!(
            "the infer request is not valid JSON of the protocol: {e}"
        ))
    })?;
    let [input] = request.inputs.as_slice() else {
        return Err(bad(format!(
            "expected exactly one input tensor (the slices), got {}",
            request.inputs.len()
        )));
    };
    let (n, h, w) = match input.shape.as_slice() {
        [h, w] | [h, w, 1] => (1, *h, *w),
        [n, h, w] | [n, h, w, 1] => (*n, *h, *w),
        _ => {
            return Err(bad(format!(
                "input `{}` has shape {:?}; expected [H,W], [H,W,1], [N,H,W] or [N,H,W,1]",
                input.name, input.shape
            )));
        }
    };
    let side = limits.max_side as i64;
    if h < 1 || w < 1 || h > side || w > side {
        return Err(bad(format!(
            "input `{}` slices are {w}×{h}; expected 1 to {side} pixels a side",
            input.name
        )));
    }
    if n < 1 || n > limits.max_slices as i64 {
        return Err(bad(format!(
            "input `{}` holds {n} slices; send 1 to {}",
            input.name, limits.max_slices
        )));
    }
    let (n, h, w) = (n as usize, h as usize, w as usize);
    let count = n * h * w;
    let (source, size) = match input.datatype.as_str() {
        "UINT8" => (SourceKind::EightBit, 1),
        "INT16" => (SourceKind::Hu, 2),
        "INT32" | "FP32" => (SourceKind::Hu, 4),
        "FP64" => (SourceKind::Hu, 8),
        other => {
            return Err(bad(format!(
                "input `{}` has datatype {other}; expected UINT8 (8-bit grey) or INT16, INT32, FP32, FP64 (HU)",
                input.name
            )));
        }
    };
    let values: Vec<f32> = match input.parameters.get("binary_data_size") {
        Some(size_value) => {
            let bytes = size_value
                .as_u64()
                .ok_or_else(|| bad("binary_data_size must be a byte count"))?
                as usize;
            if bytes != count * size || bytes > binary.len() {
                return Err(bad(format!(
                    "input `{}`: binary_data_size is {bytes} bytes, the shape and datatype need {} and the body has {} after the header",
                    input.name,
                    count * size,
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(bytes);
            binary = rest;
            let _ = binary;
            decode_le(mine, &input.datatype)
        }
        None => {
            let data = input
                .data
                .as_ref()
                .ok_or_else(|| bad(format!("input `{}` has no data", input.name)))?;
            let mut flat = Vec::with_capacity(count.min(1 << 24));
            flatten(data, &mut flat, count)?;
            if flat.len() != count {
                return Err(bad(format!(
                    "input `{}` has {} values; shape {:?} needs {count}",
                    input.name,
                    flat.len(),
                    input.shape
                )));
            }
            flat
        }
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("the input holds NaN or infinite values"));
    }
    let slices = values
        .chunks_exact(h * w)
        .map(|c| Array2::from_shape_vec((h, w), c.to_vec()).expect("h×w values"))
        .collect();
    let mut binary_output = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(outputs) = &request.outputs {
        for o in outputs {
            if o.name != "labels" {
                return Err(bad(format!(
                    "no output `{}`; the model has `labels`",
                    o.name
                )));
            }
            if let Some(b) = o.parameters.get("binary_data").and_then(Value::as_bool) {
                binary_output = b;
            }
        }
    }
    Ok(Parsed {
        id: request.id,
        slices: Slices { source, slices },
        binary_output,
    })
}

fn decode_le(bytes: &[u8], datatype: &str) -> Vec<f32> {
    match datatype {
        "UINT8" => bytes.iter().map(|&b| f32::from(b)).collect(),
        "INT16" => bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])))
            .collect(),
        "INT32" => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        "FP32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
    }
}

/// Row-major values of a flat or nested JSON array, at most `limit` of them.
fn flatten(value: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(bad("the input has more values than its shape"));
            }
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        _ => Err(bad("input data must be numbers")),
    }
}

#[derive(Serialize)]
struct ResponseOutput<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 3],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    /// Serialised straight from the bytes: no JSON value per label.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [u8]>,
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: [ResponseOutput<'a>; 1],
}

/// The infer response: `labels` UINT8 `[N,H,W]`, as JSON or binary.
pub fn respond(request: &Parsed, answer: &Answer, model: &str, version: &str) -> Response {
    let (h, w) = answer.segmented[0].labels.dim();
    let n = answer.segmented.len();
    let labels: Vec<u8> = answer
        .segmented
        .iter()
        .flat_map(|s| s.labels.iter().copied())
        .collect();
    let body = InferResponse {
        model_name: model,
        model_version: version,
        id: request.id.as_deref(),
        outputs: [ResponseOutput {
            name: "labels",
            datatype: "UINT8",
            shape: [n, h, w],
            parameters: request
                .binary_output
                .then(|| json!({ "binary_data_size": labels.len() })),
            data: (!request.binary_output).then_some(labels.as_slice()),
        }],
    };
    let mut bytes = serde_json::to_vec(&body).expect("JSON of numbers and strings");
    if !request.binary_output {
        let mut response = bytes.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let header_length = bytes.len();
    bytes.extend_from_slice(&labels);
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        HEADER_LENGTH,
        HeaderValue::from_str(&header_length.to_string()).expect("digits"),
    );
    response
}
