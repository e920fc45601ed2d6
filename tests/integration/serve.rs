//! `covseg serve` as a user runs it: the real binary on a free loopback port, slices posted over
//! HTTP, SIGTERM to stop it; and the viewer driven in a real browser (Debian's chromium through
//! playwright-core), skipped, saying so, only where no chromium is installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use covseg_stages::data::intensity::{Normalize, Preprocessing, SourceKind, Window};
use covseg_stages::model::{EncoderKind, UnetConfig};
use covseg_stages::predict::Tta;
use covseg_stages::training::{DeviceChoice, Thresholds, TrainConfig, load_bundle, write_bundle};
use ndarray::{Array2, Axis};
use ndarray_npy::WriteNpyExt;

use crate::test::Test;

/// A 48×48 HU slice with a body, lungs and bright blobs.
fn slice() -> Array2<f64> {
    Array2::from_shape_fn((48, 48), |(y, x)| {
        let (fy, fx) = (y as f64 - 24.0, x as f64 - 24.0);
        if fy * fy + fx * fx > 22.0 * 22.0 {
            -1000.0
        } else if ((x / 6) + (y / 6)) % 3 == 0 {
            -300.0
        } else {
            -850.0
        }
    })
}

/// A random-weight plain U-Net bundle whose thresholds sit at the median probability of each
/// class on [`slice`], so its labels are neither empty nor everything.
pub fn bundle(dir: &Path) -> PathBuf {
    let path = dir.join("bundle");
    let device = burn::tensor::Device::flex();
    device.seed(11);
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
        source: SourceKind::Hu,
        windows: vec![Window::LUNG],
        size: 32,
        normalize: Normalize::None,
        shift: vec![0.0],
        scale: vec![1.0],
        pixel_mm: None,
    };
    let half = Thresholds {
        ggo: 0.5,
        consolidation: 0.5,
    };
    write_bundle(&path, &model, &config, &pre, half).unwrap();
    let loaded = load_bundle(&path, &device).unwrap();
    let input = covseg_stages::predict::model_input(&pre, slice().mapv(|v| v as f32));
    let p = covseg_stages::predict::probabilities(
        &loaded,
        input.insert_axis(Axis(0)).view(),
        Tta::None,
        1,
    )
    .unwrap();
    let quantile = |c: usize, q: f64| {
        let mut v: Vec<f32> = p.index_axis(Axis(1), c).iter().copied().collect();
        v.sort_by(f32::total_cmp);
        f64::from(v[((v.len() as f64) * q) as usize])
    };
    let thresholds = Thresholds {
        ggo: quantile(0, 0.5),
        consolidation: quantile(1, 0.8),
    };
    std::fs::write(
        path.join("thresholds.json"),
        serde_json::to_string(&thresholds).unwrap(),
    )
    .unwrap();
    path
}

fn slice_npy(dir: &Path) -> PathBuf {
    let path = dir.join("slice.npy");
    slice()
        .write_npy(std::fs::File::create(&path).unwrap())
        .unwrap();
    path
}

/// Status, headers (lower-case names) and body of one answer.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// A running `covseg serve`, killed if a test fails before stopping it.
struct Server {
    child: Child,
    address: String,
    url: String,
}

impl Server {
    fn start(test: &Test, args: &[&str]) -> Self {
        let mut command = test.command(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start covseg serve");
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .to_owned();
        let address = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let server = Self {
            child,
            address,
            url,
        };
        let started = Instant::now();
        loop {
            if let Ok((200, _, _)) = server.request("GET", "/ping", &[], &[]) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "/ping never became 200"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// One request over a fresh connection: (status, headers, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of headers"))?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok((status, headers, answer[split + 4..].to_vec()))
    }

    /// SIGTERM, then the exit status and stderr.
    fn terminate(mut self) -> (Option<i32>, String, Duration) {
        let started = Instant::now();
        let pid = self.child.id();
        assert_eq!(send_sigterm(pid), 0);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "still running 30 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), stderr, started.elapsed())
    }
}

/// `kill -TERM pid` through the command (the crate denies unsafe code, so no `libc::kill`).
fn send_sigterm(pid: u32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map_or(-1, |s| s.code().unwrap_or(-1))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_real_binary_serves_slices_and_stops_on_sigterm() {
    let test = Test::new();
    let bundle = bundle(test.path());
    let npy = std::fs::read(slice_npy(test.path())).unwrap();
    let server = Server::start(
        &test,
        &[
            "serve",
            bundle.to_str().unwrap(),
            "--port",
            "0",
            "--queue",
            "4",
        ],
    );
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    let (status, headers, png) = server
        .request(
            "POST",
            "/invocations",
            &[("Content-Type", "application/x-npy")],
            &npy,
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    let version = header(&headers, "x-model-version").unwrap().to_owned();
    assert_eq!(version.len(), 64);
    let labels = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(labels.dimensions(), (48, 48));
    let classes: std::collections::BTreeSet<u8> = labels.pixels().map(|p| p.0[0]).collect();
    assert!(classes.len() >= 2, "labels {classes:?}");

    let (status, _, body) = server
        .request(
            "POST",
            "/invocations?spacing=0.7",
            &[
                ("Content-Type", "application/x-npy"),
                ("Accept", "application/json"),
            ],
            &npy,
        )
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model_version"], version.as_str());
    assert!(v["slices"][0]["area_mm2"]["ggo"].as_f64().unwrap() > 0.0);

    let data: Vec<f64> = slice().iter().copied().collect();
    let request = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [48, 48], "datatype": "FP64", "data": data }]
    });
    let (status, _, body) = server
        .request(
            "POST",
            "/v2/models/covseg/infer",
            &[("Content-Type", "application/json")],
            request.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let oip: Vec<u8> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(oip, labels.into_raw(), "the two routes disagree");
    let (_, _, meta) = server
        .request("GET", "/v2/models/covseg", &[], &[])
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["versions"][0], version.as_str());
    let (_, _, metrics) = server.request("GET", "/metrics", &[], &[]).unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("covseg_requests_total{route=\"/invocations\",code=\"200\"} 2"),
        "{metrics}"
    );

    let (code, stderr, took) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(25), "took {took:?} to stop");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn a_missing_bundle_or_a_busy_port_is_one_clear_error() {
    let mut test = Test::new()
        .args(["serve", "no-such-bundle", "--port", "0"])
        .status(2);
    let done = test.run();
    assert!(
        done.stderr.contains("no-such-bundle") && done.stderr.contains("not a bundle folder"),
        "{}",
        done.stderr
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let bundle = bundle(test.path());
    let mut test = test
        .args(["serve", bundle.to_str().unwrap(), "--port", &port])
        .status(2);
    let done = test.run();
    assert!(
        done.stderr.contains("cannot listen on") && done.stderr.contains("--port"),
        "{}",
        done.stderr
    );
}

fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn viewer_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED viewer_in_a_real_browser: no chromium installed (apt-get install chromium; or set CHROMIUM)"
        );
        return;
    };
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "chromium is installed but playwright-core is not: run `npm ci` in tests/browser"
    );
    let test = Test::new();
    let bundle = bundle(test.path());
    let npy = slice_npy(test.path());
    let server = Server::start(&test, &["serve", bundle.to_str().unwrap(), "--port", "0"]);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new("node")
        .arg("--test")
        .arg("viewer.test.mjs")
        .current_dir(&browser_dir)
        .env("COVSEG_URL", &server.url)
        .env("COVSEG_SLICE", &npy)
        .env("COVSEG_SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "the browser test failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 1000),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("viewer screenshot: {}", screenshot.display());
    let (code, stderr, _) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}
