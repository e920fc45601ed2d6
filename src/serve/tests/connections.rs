//! Real sockets: draining shutdown, slow headers, a client that stops reading.

use super::*;

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
    let server = tokio::spawn(crate::serve::listener::serve(
        listener,
        crate::serve::router(Arc::clone(&state)),
        crate::serve::listener::ConnectionLimits {
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
    tokio::spawn(crate::serve::listener::serve(
        listener,
        crate::serve::router(state),
        crate::serve::listener::ConnectionLimits {
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
    tokio::spawn(crate::serve::listener::serve(
        listener,
        crate::serve::router(state),
        crate::serve::listener::ConnectionLimits {
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
