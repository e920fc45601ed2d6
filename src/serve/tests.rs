//! Router tests, in process: every route and every refusal, against a fake model whose speed the
//! test chooses, and one real (random-weight) bundle for the agreement with `predict`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use covseg_stages::data::intensity::{Normalize, Preprocessing, SourceKind, Window};
use covseg_stages::serving::batcher::{BatchConfig, Batcher, Model};
use covseg_stages::serving::decode::DecodeLimits;
use covseg_stages::serving::segment::Recipe;
use covseg_stages::training::Thresholds;
use http_body_util::BodyExt;
use ndarray::{Array2, Array4, ArrayView4};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tower::ServiceExt;

use super::state::{AppState, Limits};

const SIDE: usize = 16;

/// GGO probability = the windowed input; consolidation never. Sleeps `delay` per batch.
struct Fake {
    delay: Duration,
}

impl Model for Fake {
    fn input_shape(&self) -> (usize, usize) {
        (1, SIDE)
    }
    fn infer(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, String> {
        std::thread::sleep(self.delay);
        let (n, _, h, w) = batch.dim();
        Ok(Array4::from_shape_fn((n, 2, h, w), |(i, c, y, x)| {
            if c == 0 { batch[(i, 0, y, x)] } else { 0.0 }
        }))
    }
}

fn recipe() -> Recipe {
    Recipe {
        preprocessing: Preprocessing {
            source: SourceKind::Hu,
            windows: vec![Window::LUNG],
            size: SIDE,
            normalize: Normalize::None,
            shift: vec![0.0],
            scale: vec![1.0],
        },
        thresholds: Thresholds {
            ggo: 0.5,
            consolidation: 0.5,
        },
    }
}

struct Setup {
    delay: Duration,
    queue: usize,
    max_batch: usize,
    max_body: usize,
    loaded: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            queue: 8,
            max_batch: 4,
            max_body: 6 << 20,
            loaded: true,
        }
    }
}

fn limits(setup: &Setup) -> Limits {
    Limits {
        max_body: setup.max_body,
        decode: DecodeLimits::default(),
        timeout: Duration::from_secs(20),
        body_timeout: Duration::from_secs(5),
        queue: setup.queue,
        in_flight: setup.queue + setup.max_batch + 2,
    }
}

fn state_with(
    setup: Setup,
    recipe: Recipe,
    model: Box<dyn FnOnce() -> Box<dyn Model> + Send>,
) -> Arc<AppState> {
    let (tx, rx) = std::sync::mpsc::channel();
    let batcher = Batcher::start(
        BatchConfig {
            max_batch: setup.max_batch,
            max_delay: Duration::from_millis(5),
            queue: setup.queue,
        },
        move || Ok(model()),
        move |r| tx.send(r).unwrap(),
    );
    rx.recv().unwrap().unwrap();
    let state = Arc::new(AppState::new(
        recipe,
        "0123456789abcdef0123".into(),
        batcher,
        limits(&setup),
        None,
    ));
    if setup.loaded {
        state.set_loaded();
    }
    state
}

fn state(setup: Setup) -> Arc<AppState> {
    let delay = setup.delay;
    state_with(
        setup,
        recipe(),
        Box::new(move || Box::new(Fake { delay }) as Box<dyn Model>),
    )
}

/// A slice in HU: the left half lung-dark air, the right half soft tissue (bright in the window).
fn slice_npy(h: usize, w: usize) -> Vec<u8> {
    let slice = Array2::<i16>::from_shape_fn((h, w), |(_, x)| if x < w / 2 { -900 } else { 40 });
    let mut bytes = Vec::new();
    slice.write_npy(&mut bytes).unwrap();
    bytes
}

async fn send(
    state: &Arc<AppState>,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = super::router(Arc::clone(state))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, content_type: &str, accept: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, accept)
        .body(Body::from(body))
        .unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn ping_and_readiness_follow_loading_and_draining() {
    let state = state(Setup {
        loaded: false,
        ..Setup::default()
    });
    assert_eq!(
        send(&state, get("/ping")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send(&state, get("/v2/health/ready")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send(&state, get("/v2/health/live")).await.0, StatusCode::OK);
    let (status, headers, _) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            slice_npy(8, 8),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    state.set_loaded();
    let (status, headers, body) = send(&state, get("/ping")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers["x-model-version"], "0123456789abcdef0123");
    assert_eq!(
        send(&state, get("/v2/models/covseg/ready")).await.0,
        StatusCode::OK
    );
    state.set_draining();
    assert_eq!(
        send(&state, get("/ping")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(send(&state, get("/v2/health/live")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn invocations_answer_labels_masks_and_json_by_accept() {
    let state = state(Setup::default());
    let (status, headers, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            slice_npy(20, 12),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "image/png");
    let labels = image::load_from_memory(&body).unwrap().to_luma8();
    assert_eq!(
        labels.dimensions(),
        (12, 20),
        "labels come back at the slice's own size"
    );
    assert_eq!(labels.get_pixel(1, 10).0[0], 0, "air is background");
    assert_eq!(
        labels.get_pixel(10, 10).0[0],
        1,
        "bright tissue is GGO for the fake model"
    );

    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "application/x-npy",
            slice_npy(20, 12),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let masks = ndarray::Array4::<bool>::read_npy(&body[..]).unwrap();
    assert_eq!(masks.dim(), (1, 20, 12, 2));
    assert!(masks[(0, 10, 10, 0)] && !masks[(0, 10, 1, 0)]);

    let request = Request::post("/invocations?spacing=0.5")
        .header(header::CONTENT_TYPE, "application/x-npy")
        .header(header::ACCEPT, "application/json")
        .body(Body::from(slice_npy(20, 12)))
        .unwrap();
    let (status, _, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    let s = &v["slices"][0];
    let ggo = s["pixels"]["ggo"].as_u64().unwrap();
    assert!(ggo > 0 && ggo < 240, "{v}");
    assert_eq!(s["area_mm2"]["ggo"].as_f64().unwrap(), ggo as f64 * 0.25);
    assert!((s["lesion_share"].as_f64().unwrap() - ggo as f64 / 240.0).abs() < 1e-9);
    assert_eq!(v["model_version"], "0123456789abcdef0123");
    assert!(v["timings"]["total_ms"].as_f64().unwrap() >= 0.0);

    // Several slices: .npy by default, and a PNG cannot hold them.
    let mut three = Vec::new();
    ndarray::Array3::<f32>::from_elem((3, 8, 8), 40.0)
        .write_npy(&mut three)
        .unwrap();
    let (status, headers, _) = send(
        &state,
        post("/invocations", "application/x-npy", "*/*", three.clone()),
    )
    .await;
    assert_eq!(
        (status, &headers[header::CONTENT_TYPE]),
        (
            StatusCode::OK,
            &"application/x-npy"
                .parse::<axum::http::HeaderValue>()
                .unwrap()
        )
    );
    let (status, _, body) = send(
        &state,
        post("/invocations", "application/x-npy", "image/png", three),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_ACCEPTABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn refusals_413_415_400_and_wrong_kind_of_data() {
    let state = state(Setup {
        max_body: 1000,
        ..Setup::default()
    });
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            vec![0; 5000],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("1000 bytes")
    );
    // Without a Content-Length (chunked), the limit holds while reading.
    let request = Request::post("/invocations")
        .header(header::CONTENT_TYPE, "application/x-npy")
        .body(Body::from(vec![0u8; 1200]))
        .unwrap();
    assert_eq!(send(&state, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, _, body) = send(
        &state,
        post("/invocations", "text/plain", "*/*", b"hello".to_vec()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );

    let started = Instant::now();
    let (status, _, body) = send(
        &state,
        post("/invocations", "image/png", "*/*", png_bomb(60000, 60000)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&body)["error"].as_str().unwrap().contains("60000"));
    assert!(started.elapsed() < Duration::from_secs(1));

    // An 8-bit PNG to a model trained on HU is refused, saying what to send.
    let mut png = Vec::new();
    image::GrayImage::new(8, 8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, _, body) = send(&state, post("/invocations", "image/png", "*/*", png)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(json(&body)["error"].as_str().unwrap().contains(".npy"));

    let (status, _, _) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "*/*",
            b"\x93NUMPY garbage".to_vec(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(send(&state, get("/nowhere")).await.0, StatusCode::NOT_FOUND);
}

/// A PNG whose header declares `w`×`h` (CRC fixed up) with 8×8 pixels of data.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::GrayImage::new(8, 8)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = 0xffff_ffffu32;
    for &b in &bytes[12..29] {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    bytes[29..33].copy_from_slice(&(!crc).to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    let state = state(Setup {
        delay: Duration::from_millis(1500),
        queue: 1,
        max_batch: 1,
        ..Setup::default()
    });
    let spawn = |state: Arc<AppState>| {
        tokio::spawn(async move {
            send(
                &state,
                post(
                    "/invocations",
                    "application/x-npy",
                    "image/png",
                    slice_npy(8, 8),
                ),
            )
            .await
            .0
        })
    };
    let running = spawn(Arc::clone(&state));
    tokio::time::sleep(Duration::from_millis(300)).await; // in the model
    let queued = spawn(Arc::clone(&state));
    tokio::time::sleep(Duration::from_millis(300)).await; // in the queue
    let started = Instant::now();
    let (status, headers, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            slice_npy(8, 8),
        ),
    )
    .await;
    let refused_in = started.elapsed();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("queue is full")
    );
    assert!(
        refused_in < Duration::from_millis(100),
        "refused after {refused_in:?}"
    );
    assert_eq!(running.await.unwrap(), StatusCode::OK);
    assert_eq!(queued.await.unwrap(), StatusCode::OK);
    let (_, _, metrics) = send(&state, get("/metrics")).await;
    let text = String::from_utf8(metrics).unwrap();
    assert!(
        text.contains("covseg_rejected_total{reason=\"queue_full\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("covseg_requests_total{route=\"/invocations\",code=\"503\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("covseg_requests_total{route=\"/invocations\",code=\"200\"} 2"),
        "{text}"
    );
    assert!(text.contains("covseg_batch_size_count 2"), "{text}");
    assert!(text.contains("covseg_queue_depth 0"), "{text}");
}

#[tokio::test]
async fn open_inference_protocol_metadata_and_infer_json_and_binary() {
    let state = state(Setup::default());
    let (status, _, body) = send(&state, get("/v2/models/covseg")).await;
    assert_eq!(status, StatusCode::OK);
    let meta = json(&body);
    assert_eq!(meta["versions"][0], "0123456789abcdef0123");
    assert_eq!(meta["outputs"][0]["name"], "labels");
    assert_eq!(
        send(&state, get("/v2/models/other")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(
            &state,
            get("/v2/models/covseg/versions/0123456789abcdef0123")
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&state, get("/v2/models/covseg/versions/nope")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        json(&send(&state, get("/v2")).await.2)["extensions"][0],
        "binary_tensor_data"
    );

    let data: Vec<i16> = (0..2 * 4 * 6)
        .map(|i| if i % 6 < 3 { -900 } else { 40 })
        .collect();
    let request = serde_json::json!({
        "id": "r1",
        "inputs": [{ "name": "image", "shape": [2, 4, 6], "datatype": "INT16", "data": data }],
    });
    let (status, _, body) = send(
        &state,
        post(
            "/v2/models/covseg/infer",
            "application/json",
            "*/*",
            request.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    assert_eq!(v["id"], "r1");
    assert_eq!(v["model_version"], "0123456789abcdef0123");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 4, 6]));
    let labels: Vec<u64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(labels.len(), 48);
    assert_eq!((labels[0], labels[5]), (0, 1));

    // The binary extension, both ways.
    let header_json = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [2, 4, 6], "datatype": "INT16", "parameters": { "binary_data_size": 96 } }],
        "outputs": [{ "name": "labels", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header_json.clone().into_bytes();
    body.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    let request = Request::post("/v2/models/covseg/infer")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            "inference-header-content-length",
            header_json.len().to_string(),
        )
        .body(Body::from(body))
        .unwrap();
    let (status, headers, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let split: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let head = json(&body[..split]);
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 48);
    let binary: Vec<u64> = body[split..].iter().map(|&b| u64::from(b)).collect();
    assert_eq!(binary, labels, "binary and JSON answers agree");

    let wrong = serde_json::json!({ "inputs": [{ "name": "image", "shape": [4, 6], "datatype": "INT16", "data": [1, 2, 3] }] });
    let (status, _, body) = send(
        &state,
        post(
            "/v2/models/covseg/infer",
            "application/json",
            "*/*",
            wrong.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&body)["error"].as_str().unwrap().contains("needs 24"));
    let huge = serde_json::json!({ "inputs": [{ "name": "image", "shape": [60000, 60000], "datatype": "FP32", "data": [] }] });
    let (status, _, _) = send(
        &state,
        post(
            "/v2/models/covseg/infer",
            "application/json",
            "*/*",
            huge.to_string().into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn viewer_multipart_openapi_and_assets() {
    let state = state(Setup::default());
    let boundary = "XyZ";
    let mut body = Vec::new();
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.npy\"\r\nContent-Type: application/octet-stream\r\n\r\n").bytes());
    body.extend(slice_npy(16, 16));
    body.extend(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"spacing\"\r\n\r\n0.5,2\r\n--{boundary}--\r\n").bytes());
    let request = Request::post("/v1/segment")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (status, _, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    let s = &v["slices"][0];
    assert!(
        s["image"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    assert!(
        s["labels"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    assert_eq!(
        s["area_mm2"]["ggo"].as_f64().unwrap(),
        s["pixels"]["ggo"].as_f64().unwrap()
    );
    assert!(
        v["notice"]
            .as_str()
            .unwrap()
            .contains("not a medical device")
    );

    // A 512×512 float64 slice is over axum's default 2 MiB body limit: still served.
    let mut big = Vec::new();
    ndarray::Array2::<f64>::from_elem((512, 512), 40.0)
        .write_npy(&mut big)
        .unwrap();
    assert!(big.len() > 2 << 20);
    let mut body = Vec::new();
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npy\"\r\n\r\n").bytes());
    body.extend(big);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let request = Request::post("/v1/segment")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (status, _, body) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["slices"][0]["width"], 512);
    let (status, _, _) = send(
        &state,
        post("/v1/segment", "application/x-npy", "*/*", slice_npy(8, 8)),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, headers, page) = send(&state, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(
        String::from_utf8(page)
            .unwrap()
            .contains("not a medical device")
    );
    assert_eq!(send(&state, get("/viewer.js")).await.0, StatusCode::OK);

    // Every route the router serves is documented, and nothing else is.
    let spec = json(&send(&state, get("/openapi.json")).await.2);
    let documented: std::collections::BTreeSet<String> =
        spec["paths"].as_object().unwrap().keys().cloned().collect();
    let served: std::collections::BTreeSet<String> = [
        "/",
        "/viewer.js",
        "/ping",
        "/invocations",
        "/v1/segment",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/metrics",
        "/openapi.json",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(documented, served);
    for path in &served {
        let p = path
            .replace("{model}", "covseg")
            .replace("{version}", "0123456789abcdef0123");
        let method_is_get = spec["paths"][path]["get"].is_object();
        if method_is_get {
            assert_ne!(send(&state, get(&p)).await.0, StatusCode::NOT_FOUND, "{p}");
        }
    }
}

/// Panics on its first call after the warm-up, then works.
struct PanicsOnce {
    calls: usize,
}

impl Model for PanicsOnce {
    fn input_shape(&self) -> (usize, usize) {
        (1, SIDE)
    }
    fn infer(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array4<f32>, String> {
        self.calls += 1;
        assert!(self.calls != 2, "device lost");
        Fake {
            delay: Duration::ZERO,
        }
        .infer(batch)
    }
}

#[tokio::test]
async fn a_panicking_model_fails_its_batch_and_keeps_serving() {
    let state = state_with(
        Setup::default(),
        recipe(),
        Box::new(|| Box::new(PanicsOnce { calls: 0 }) as Box<dyn Model>),
    );
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            slice_npy(8, 8),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("device lost")
    );
    let (status, _, _) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "image/png",
            slice_npy(8, 8),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the model thread died with the panic"
    );
    assert_eq!(send(&state, get("/ping")).await.0, StatusCode::OK);
}

/// Raw HTTP/1.1 over a socket: the status code of one request, `Connection: close`.
async fn raw_request(
    address: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_queued_work_and_stops_accepting() {
    let state = state(Setup {
        delay: Duration::from_millis(300),
        max_batch: 1,
        ..Setup::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(super::listener::serve(
        listener,
        super::router(Arc::clone(&state)),
        super::listener::ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
            drain: Duration::from_secs(10),
        },
        stop_rx,
    ));
    let body = slice_npy(8, 8);
    let head = format!(
        "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut requests = Vec::new();
    for _ in 0..3 {
        let (head, body) = (head.clone(), body.clone());
        requests.push(tokio::spawn(async move {
            raw_request(address, &head, &body).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    state.set_draining();
    stop_tx.send(true).unwrap();
    for r in requests {
        assert_eq!(
            r.await.unwrap().unwrap(),
            200,
            "a request in progress was cut off"
        );
    }
    assert_eq!(
        server.await.unwrap(),
        0,
        "connections were still open at the drain limit"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still accepting after shutdown"
    );
    let state2 = Arc::clone(&state);
    tokio::task::spawn_blocking(move || state2.batcher.close())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let state = state(Setup::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(super::listener::serve(
        listener,
        super::router(state),
        super::listener::ConnectionLimits {
            header_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_secs(5),
            max_connections: 4,
            drain: Duration::from_secs(1),
        },
        stop_rx,
    ));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server kept a slow client");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The endpoint and `predict` give the same masks for the same slice and bundle, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_matches_predict_bit_for_bit() {
    use covseg_stages::model::{EncoderKind, UnetConfig};
    use covseg_stages::predict::{PredictConfig, PredictInput, Tta};
    use covseg_stages::serving::segment::BundleModel;
    use covseg_stages::training::{DeviceChoice, TrainConfig, load_bundle, write_bundle};
    let dir = tempfile::tempdir().unwrap();
    let bundle_dir = dir.path().join("bundle");
    let device = burn::tensor::Device::flex();
    device.seed(5);
    let config = TrainConfig {
        model: UnetConfig {
            encoder: EncoderKind::Plain,
            encoder_depth: 3,
            decoder_channels: Some(vec![16, 8, 8]),
            ..Default::default()
        },
        device: DeviceChoice::Cpu,
        ..Default::default()
    };
    let model = config.model.init(&device).unwrap();
    let pre = Preprocessing {
        size: 32,
        ..recipe().preprocessing
    };
    let thresholds = Thresholds {
        ggo: 0.5,
        consolidation: 0.5,
    };
    write_bundle(&bundle_dir, &model, &config, &pre, thresholds).unwrap();

    // One 40×36 slice in HU with structure, as a Kaggle .npy and as an upload.
    let slice = Array2::<f64>::from_shape_fn((40, 36), |(y, x)| {
        ((y * 37 + x * 11) % 200) as f64 * 8.0 - 1000.0
    });
    let kaggle = slice.clone().into_shape_with_order((1, 40, 36, 1)).unwrap();
    let images = dir.path().join("images.npy");
    kaggle
        .write_npy(std::fs::File::create(&images).unwrap())
        .unwrap();
    // Thresholds at the median probability of each class, so the masks are neither empty nor
    // full (random weights put every pixel on one side of 0.5).
    let bundle = load_bundle(&bundle_dir, &device).unwrap();
    let input = covseg_stages::predict::model_input(&pre, slice.mapv(|v| v as f32));
    let p = covseg_stages::predict::probabilities(
        &bundle,
        input.insert_axis(ndarray::Axis(0)).view(),
        Tta::None,
        1,
    )
    .unwrap();
    let median = |c: usize| {
        let mut v: Vec<f32> = p.index_axis(ndarray::Axis(1), c).iter().copied().collect();
        v.sort_by(f32::total_cmp);
        f64::from(v[v.len() / 2])
    };
    let thresholds = Thresholds {
        ggo: median(0),
        consolidation: median(1),
    };
    std::fs::write(
        bundle_dir.join("thresholds.json"),
        serde_json::to_string(&thresholds).unwrap(),
    )
    .unwrap();
    let out = dir.path().join("predicted");
    let bundle = load_bundle(&bundle_dir, &device).unwrap();
    covseg_stages::predict::predict(
        &bundle,
        &PredictInput::Kaggle(images),
        &PredictConfig {
            batch_size: 1,
            overlays: 0,
            ..Default::default()
        },
        &out,
        &covseg_stages::NoProgress,
    )
    .unwrap();
    let expected = std::fs::read(out.join("masks.npy")).unwrap();

    let load_dir = bundle_dir.clone();
    let state = state_with(
        Setup::default(),
        Recipe {
            preprocessing: pre,
            thresholds,
        },
        Box::new(move || {
            let bundle = load_bundle(&load_dir, &burn::tensor::Device::flex()).unwrap();
            Box::new(BundleModel {
                bundle,
                tta: Tta::None,
                max_batch: 4,
            }) as Box<dyn Model>
        }),
    );
    let mut upload = Vec::new();
    slice.write_npy(&mut upload).unwrap();
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "application/x-npy",
            upload,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let masks = ndarray::Array4::<bool>::read_npy(&body[..]).unwrap();
    assert!(
        masks.iter().any(|&m| m) && masks.iter().any(|&m| !m),
        "a degenerate prediction proves nothing"
    );
    assert_eq!(body, expected, "the endpoint's masks differ from predict's");

    // Batched with another request's slice, a slice still gets the same masks (on the CPU the
    // network computes each slice of a batch on its own).
    let other = Array2::<f64>::from_shape_fn((40, 36), |(y, x)| {
        ((y * 13 + x * 29) % 170) as f64 * 9.0 - 1000.0
    });
    let mut pair = ndarray::Array3::<f64>::zeros((2, 40, 36));
    pair.index_axis_mut(ndarray::Axis(0), 0).assign(&slice);
    pair.index_axis_mut(ndarray::Axis(0), 1).assign(&other);
    let mut upload = Vec::new();
    pair.write_npy(&mut upload).unwrap();
    let (status, _, body) = send(
        &state,
        post(
            "/invocations",
            "application/x-npy",
            "application/x-npy",
            upload,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let batched = ndarray::Array4::<bool>::read_npy(&body[..]).unwrap();
    let alone = ndarray::Array4::<bool>::read_npy(&expected[..]).unwrap();
    assert_eq!(
        batched.index_axis(ndarray::Axis(0), 0),
        alone.index_axis(ndarray::Axis(0), 0),
        "batching changed a slice's masks"
    );
}

/// A client that sends a request and never reads the (large) answer loses its connection at the
/// write timeout, and its connection slot goes to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let state = state(Setup {
        max_body: 40 << 20,
        ..Setup::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(super::listener::serve(
        listener,
        super::router(state),
        super::listener::ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(300),
            max_connections: 1,
            drain: Duration::from_secs(1),
        },
        stop_rx,
    ));
    // 64 slices of 512×512 HU as a binary OIP tensor: the JSON answer is about 32 MB of labels.
    let header = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [64, 512, 512], "datatype": "INT16", "parameters": { "binary_data_size": 2 * 64 * 512 * 512 } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, 2 * 64 * 512 * 512));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    let head = format!(
        "POST /v2/models/covseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
        header.len(),
        body.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&body).await.unwrap();
    // The only connection slot is held while the server writes; once the write times out, the
    // next client is served.
    let started = Instant::now();
    let mut other = tokio::net::TcpStream::connect(address).await.unwrap();
    other
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), other.read_to_end(&mut answer))
        .await
        .expect("a stalled reader kept the only connection")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(stalled);
}
