//! Bad input data gets one clear error naming the file, exit code 2, and no artifact.

use crate::test::{Test, write_f64_npy};

const SPLIT: &str = r#"
[[stage]]
name = "split"
kind = "split"
inputs = { medseg_images = "data/images_medseg.npy", medseg_masks = "data/masks_medseg.npy" }
params = { folds = 2 }
"#;

fn failing(t: &mut Test) -> String {
    let out = t.then(["run"]).expect(2).go();
    assert!(t.objects().is_empty(), "a failed stage leaves no entry");
    assert_eq!(
        std::fs::read_dir(t.cache().join("tmp")).unwrap().count(),
        0,
        "and no staging debris"
    );
    out.stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn nan_wrong_shape_and_count_mismatch() {
    let mut t = Test::new()
        .pipeline(SPLIT)
        .args(["synth", "--out", "data", "--slices", "4", "--size", "64"]);
    t.run();
    let images = t.path().join("data/images_medseg.npy");
    let mut values = vec![-800.0; 4 * 64 * 64];
    values[3 * 64 * 64 + 5] = f64::NAN;
    write_f64_npy(&images, &[4, 64, 64, 1], &values);
    assert!(
        failing(&mut t).contains("data/images_medseg.npy: slice 3 holds NaN or infinite values")
    );

    write_f64_npy(&images, &[4, 64, 64], &vec![0.0; 4 * 64 * 64]);
    assert!(
        failing(&mut t)
            .contains("images have shape (4,64,64), expected (slices, height, width, 1)")
    );

    write_f64_npy(&images, &[3, 64, 64, 1], &vec![0.0; 3 * 64 * 64]);
    assert!(failing(&mut t).contains("masks_medseg.npy has 4 slices but images_medseg.npy has 3"));

    std::fs::write(&images, b"garbage").unwrap();
    assert!(failing(&mut t).contains("data/images_medseg.npy: not a .npy file"));
}

#[test]
fn empty_image_folder() {
    let toml = "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = { folder = \"ds\" }\nparams = { size = 64, folds = 2 }\n";
    let mut t = Test::new()
        .pipeline(toml)
        .file("ds/images/.keep", "")
        .file("ds/masks/.keep", "");
    assert!(failing(&mut t).contains("ds/images: holds no .png or .jpg images"));
    t = t
        .file("ds/images/1.png", "not an image")
        .file("ds/masks/1.png", "not a mask")
        .file("ds/images/2.png", "not an image")
        .file("ds/masks/2.png", "not a mask");
    let err = failing(&mut t);
    assert!(
        err.contains("ds/images/1.png: cannot decode the image"),
        "{err}"
    );
}

/// A 193-byte `.npy` whose header declares `(100000, 512, 512, 1)` float64 (200 GB).
fn npy_bomb(path: &std::path::Path, descr: &str, channels: usize) {
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': (100000, 512, 512, {channels}), }}"
    );
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(193, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_header_promising_200_gb_is_an_input_error_not_an_abort() {
    let mut t = Test::new().args([
        "exec",
        "split",
        "-i",
        "medseg_images=bomb.npy",
        "-i",
        "medseg_masks=bomb_m.npy",
        "--out",
        "o",
    ]);
    npy_bomb(&t.path().join("bomb.npy"), "<f8", 1);
    npy_bomb(&t.path().join("bomb_m.npy"), "|b1", 4);
    let started = std::time::Instant::now();
    let done = t.expect(2).go();
    eprintln!("exit 2 after {:?}", started.elapsed());
    assert!(
        done.stderr.contains("bomb.npy: header declares shape (100000,512,512,1) of '<f8' = 209715200000 bytes of data, but the file holds 65 bytes of data (193 bytes in all)"),
        "{}",
        done.stderr
    );
    assert!(!t.path().join("o").join("train_images.npy").exists());
}

#[test]
fn a_one_dimensional_array_is_an_input_error_naming_the_file() {
    let mut t = Test::new()
        .pipeline(SPLIT)
        .args(["synth", "--out", "data", "--slices", "4", "--size", "64"]);
    t.run();
    write_f64_npy(&t.path().join("data/images_medseg.npy"), &[7], &[0.0; 7]);
    let err = failing(&mut t);
    assert!(
        err.contains(
            "data/images_medseg.npy: images have shape (7), expected (slices, height, width, 1)"
        ),
        "{err}"
    );
    write_f64_npy(&t.path().join("data/masks_medseg.npy"), &[7], &[0.0; 7]);
    assert!(failing(&mut t).contains("data/images_medseg.npy"));
}

#[test]
fn a_png_declaring_more_pixels_than_its_file_holds_is_refused() {
    // The pixel data of a 1×1 grey PNG under a header that claims 60000×60000 (3.6 GB decoded).
    let png = grey_png(60000, 60000, &[0, 0]);
    let toml = "[[stage]]\nname = \"split\"\nkind = \"split\"\ninputs = { folder = \"ds\" }\nparams = { size = 64, folds = 2 }\n";
    let mut t = Test::new().pipeline(toml);
    for dir in ["ds/images", "ds/masks"] {
        std::fs::create_dir_all(t.path().join(dir)).unwrap();
    }
    std::fs::write(t.path().join("ds/images/1.png"), &png).unwrap();
    std::fs::write(t.path().join("ds/masks/1.png"), &png).unwrap();
    std::fs::write(t.path().join("ds/images/2.png"), &png).unwrap();
    std::fs::write(t.path().join("ds/masks/2.png"), &png).unwrap();
    let err = failing(&mut t);
    assert!(
        err.contains(
            "ds/images/1.png: its header declares more pixels than a file of this size can hold"
        ),
        "{err}"
    );
}

/// A grey 8-bit PNG with the given header size and raw (filtered) scanlines, stored uncompressed.
pub fn grey_png(width: u32, height: u32, raw: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    // zlib: header, one stored block, Adler-32.
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in raw {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
