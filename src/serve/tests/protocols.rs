//! The Open Inference Protocol routes, the viewer's multipart upload, the OpenAPI document and
//! the viewer's assets, through the router.

use super::*;

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
        "/v1/volume",
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
