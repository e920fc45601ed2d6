//! Whole volumes: NIfTI and zipped DICOM uploads, the three answer formats, and every refusal.

use std::io::Read;
use std::path::Path;

use covseg_stages::data::phantom::{VolumePhantomConfig, VolumeSetPaths, write_volume_set};
use covseg_stages::volume::{Volume, nifti};

use super::*;

/// Two phantom volumes of 64² × 6 (NIfTI, labels, DICOM) under `dir`.
pub(super) fn phantoms(dir: &Path) -> VolumeSetPaths {
    let paths = VolumeSetPaths {
        nifti: dir.join("nifti"),
        labels: dir.join("labels"),
        dicom: dir.join("dicom"),
    };
    let config = VolumePhantomConfig {
        volumes: 2,
        slices: 6,
        size: 64,
        ..Default::default()
    };
    write_volume_set(&config, 3, &paths, &covseg_stages::NoProgress).unwrap();
    paths
}

/// A zip of a series folder's files, as a user would make it.
pub(super) fn zip_series(dirs: &[&Path]) -> Vec<u8> {
    let mut files = Vec::new();
    for dir in dirs {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = format!(
                "{}/{}",
                dir.file_name().unwrap().to_string_lossy(),
                path.file_name().unwrap().to_string_lossy()
            );
            files.push((name, std::fs::read(&path).unwrap()));
        }
    }
    covseg_stages::serving::volume::zip_files(&files)
}

fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut f = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().unwrap().into_owned(), data)
        })
        .collect()
}

pub(super) fn labels_of(nii: &[u8]) -> Volume {
    nifti::read_bytes(Path::new("answer.nii.gz"), nii, true).unwrap()
}

pub(super) fn assert_aligned(labels: &Volume, input: &Volume) {
    assert_eq!(labels.shape(), input.shape());
    for (a, b) in labels
        .affine
        .0
        .iter()
        .flatten()
        .zip(input.affine.0.iter().flatten())
    {
        assert!(
            (a - b).abs() < 1e-4,
            "{:?} vs {:?}",
            labels.affine,
            input.affine
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_gets_its_label_nifti_and_report_in_every_answer_format() {
    let dir = tempfile::tempdir().unwrap();
    let paths = phantoms(dir.path());
    let file = paths.nifti.join("phantom-000.nii.gz");
    let input = nifti::read(&file).unwrap();
    let upload = std::fs::read(&file).unwrap();
    let state = state(Setup::default());

    // The default answer: a zip of the label NIfTI, the report JSON and its page.
    let (status, headers, body) = send(
        &state,
        post(
            "/v1/volume?name=chest-1",
            "application/gzip",
            "*/*",
            upload.clone(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers[header::CONTENT_TYPE], "application/zip");
    assert!(
        headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("chest-1.zip")
    );
    let files = unzip(&body);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "chest-1.nii.gz",
            "chest-1.report.html",
            "chest-1.report.json"
        ]
    );
    let labels = labels_of(&files["chest-1.nii.gz"]);
    assert_aligned(&labels, &input);
    let values: std::collections::BTreeSet<u8> = labels.hu.iter().map(|&v| v as u8).collect();
    assert!(values.contains(&3), "the lungs are labelled: {values:?}");
    let report = json(&files["chest-1.report.json"]);
    assert_eq!(report["volume"], "chest-1");
    assert_eq!(report["shape"], serde_json::json!([64, 64, 6]));
    let lung_ml = labels.hu.iter().filter(|&&v| v > 0.0).count() as f64 * input.voxel_ml();
    let reported = report["lung_ml"]["whole"].as_f64().unwrap();
    assert!(
        (reported - lung_ml).abs() < 1e-6 * lung_ml,
        "{reported} vs {lung_ml}"
    );
    assert!(
        String::from_utf8_lossy(&files["chest-1.report.html"]).contains("<img"),
        "the page shows overlaid slices"
    );

    // The report alone, with the model version and timings.
    let (status, _, body) = send(
        &state,
        post(
            "/v1/volume",
            "application/gzip",
            "application/json",
            upload.clone(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = json(&body);
    assert_eq!(answer["model_version"], "0123456789abcdef0123");
    assert_eq!(answer["report"]["volume"], "volume");
    assert_eq!(
        answer["report"]["involvement_percent"],
        report["involvement_percent"]
    );
    assert!(answer["timings"]["total_ms"].as_f64().unwrap() > 0.0);

    // The label NIfTI alone; and the same volume as a zipped DICOM series on /invocations
    // (SageMaker's one route) gets the same labels.
    let (status, headers, nii) = send(
        &state,
        post(
            "/v1/volume",
            "application/octet-stream",
            "application/gzip",
            upload,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/gzip");
    assert_eq!(labels_of(&nii).hu, labels.hu);
    let zipped = zip_series(&[&paths.dicom.join("phantom-000")]);
    let (status, _, nii) = send(
        &state,
        post(
            "/invocations",
            "application/zip",
            "application/gzip",
            zipped,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&nii));
    let from_dicom = labels_of(&nii);
    assert_aligned(&from_dicom, &input);
    assert_eq!(from_dicom.hu, labels.hu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_refusals_are_clear_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let paths = phantoms(dir.path());
    let upload = std::fs::read(paths.nifti.join("phantom-000.nii.gz")).unwrap();
    let state = state(Setup::default());
    let error_of = |body: &[u8]| json(body)["error"].as_str().unwrap().to_owned();

    let (status, _, body) = send(
        &state,
        post(
            "/v1/volume",
            "application/gzip",
            "image/png",
            upload.clone(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    assert!(error_of(&body).contains("application/zip"));

    let (status, _, body) = send(
        &state,
        post("/v1/volume", "image/png", "*/*", upload.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(&body).contains("is not a volume"));

    let (status, _, body) = send(
        &state,
        post("/v1/volume", "application/zip", "*/*", upload.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("declared a zip but its bytes are a NIfTI volume"));

    let mut damaged = upload.clone();
    damaged.truncate(upload.len() / 2);
    let (status, _, body) = send(
        &state,
        post("/v1/volume", "application/gzip", "*/*", damaged),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).starts_with("upload.nii.gz:"),
        "{}",
        error_of(&body)
    );

    let two = zip_series(&[
        &paths.dicom.join("phantom-000"),
        &paths.dicom.join("phantom-001"),
    ]);
    let (status, _, body) = send(&state, post("/v1/volume", "application/zip", "*/*", two)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("send one series per request"));

    // One volume at a time: a second is 503 with Retry-After while one is in progress.
    {
        let _held = state.volume_slot().unwrap();
        let (status, headers, body) = send(
            &state,
            post("/v1/volume", "application/gzip", "*/*", upload.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(error_of(&body).contains("one at a time"));
    }

    // Limits of the server's flags: body size and slices.
    let mut small_body = limits(&Setup::default());
    small_body.max_volume_body = upload.len() - 1;
    let (status, _, body) = send(
        &limited(small_body),
        post("/v1/volume", "application/gzip", "*/*", upload.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&body).contains("--max-volume-body"));
    let mut few_slices = limits(&Setup::default());
    few_slices.volume.max_slices = 5;
    let (status, _, body) = send(
        &limited(few_slices),
        post("/v1/volume", "application/gzip", "*/*", upload),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("6 slices; the most accepted is 5"));
}

/// A loaded server with the fake model and these limits.
fn limited(limits: Limits) -> Arc<AppState> {
    let model = || {
        Ok(Box::new(Fake {
            delay: Duration::ZERO,
        }) as Box<dyn Model>)
    };
    let state = Arc::new(AppState::new(
        recipe(),
        "v".into(),
        Batcher::start(BatchConfig::default(), model, |_| {}),
        limits,
        None,
    ));
    state.set_loaded();
    state
}
