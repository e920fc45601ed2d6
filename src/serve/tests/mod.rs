//! The server's tests, in process: shared fakes and helpers here; every route and refusal in
//! `routes`, the inference protocol and the viewer in `protocols`, sockets, shutdown and timeouts
//! in `connections`, the agreement with `predict` (one real random-weight bundle) in `parity`.

mod connections;
mod parity;
mod protocols;
mod routes;
mod volumes;

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

use crate::serve::state::{AppState, Limits};

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
            pixel_mm: None,
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
        max_batch: setup.max_batch,
        volume: covseg_stages::serving::volume::VolumeLimits::default(),
        max_volume_body: 64 << 20,
        volume_timeout: Duration::from_secs(20),
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
    let response = crate::serve::router(Arc::clone(state))
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
