//! Every route and every refusal, through the router.

use super::*;

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
