//! Content digests: blake3 of a file (memory-mapped and hashed on all cores when large) or of a
//! folder (its sorted relative paths and their file digests).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A blake3 digest, shown and stored as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        blake3::Hash::from_hex(hex)
            .ok()
            .map(|h| Self(*h.as_bytes()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not a blake3 hex digest: {s}")))
    }
}

/// Below this size a plain read beats setting up a memory map and threads.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// Hashes one file. Large files are memory-mapped and hashed in parallel (blake3's rayon mode).
pub fn file(path: &Path) -> Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len >= MMAP_THRESHOLD {
        hasher
            .update_mmap_rayon(path)
            .map_err(|e| Error::io(path, e))?;
    } else {
        hasher
            .update_reader(std::fs::File::open(path).map_err(|e| Error::io(path, e))?)
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(Digest(*hasher.finalize().as_bytes()))
}

/// Every regular file under `root`, as sorted relative paths with `/` separators. Symbolic links
/// are followed, to files and to folders alike (a dataset whose `images/` is a link to another
/// disk is still part of the digest); a link back into a folder being walked is an error that
/// names the loop, and a dangling link is an error naming it.
pub fn list_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    use std::os::unix::fs::MetadataExt;
    fn walk(
        dir: &Path,
        prefix: &str,
        stack: &mut Vec<(u64, u64)>,
        out: &mut Vec<(String, PathBuf)>,
    ) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
            // Following the link: what it points at decides.
            let meta = if kind.is_symlink() {
                std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?
            } else {
                entry.metadata().map_err(|e| Error::io(&path, e))?
            };
            if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if stack.contains(&id) {
                    return Err(Error::io(
                        &path,
                        std::io::Error::other(
                            "a symbolic link loops back into a folder that contains it",
                        ),
                    ));
                }
                stack.push(id);
                walk(&path, &rel, stack, out)?;
                stack.pop();
            } else if meta.is_file() {
                out.push((rel, path));
            }
        }
        Ok(())
    }
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    let mut stack = vec![(meta.dev(), meta.ino())];
    let mut out = Vec::new();
    walk(root, "", &mut stack, &mut out)?;
    out.sort();
    Ok(out)
}

/// Digest of a folder from its files' relative paths and digests.
pub fn tree(files: &[(String, Digest)]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"covseg-tree-v1\0");
    for (rel, digest) in files {
        hasher.update(rel.as_bytes());
        hasher.update(b"\0");
        hasher.update(&digest.0);
    }
    Digest(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_matches_reference_blake3_for_small_and_large_files() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1000, 3 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let p = dir.path().join("f");
            std::fs::write(&p, &bytes).unwrap();
            assert_eq!(file(&p).unwrap(), Digest::of_bytes(&bytes));
        }
    }

    #[test]
    fn linked_folders_are_followed_and_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("sub/a.png"), b"a").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&real, data.join("images")).unwrap();
        let files = list_files(&data).unwrap();
        assert_eq!(
            files.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["images/sub/a.png"]
        );
        std::os::unix::fs::symlink(&real, real.join("sub/again")).unwrap();
        let err = list_files(&data).unwrap_err().to_string();
        assert!(err.contains("loops back"), "{err}");
        assert!(err.contains("again"), "{err}");
    }

    #[test]
    fn tree_digest_depends_on_names_and_content() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let base = tree(&[("x".into(), a), ("y".into(), b)]);
        assert_ne!(base, tree(&[("x".into(), b), ("y".into(), a)]));
        assert_ne!(base, tree(&[("x".into(), a), ("z".into(), b)]));
        assert_eq!(base, tree(&[("x".into(), a), ("y".into(), b)]));
    }
}
