//! Remembers the digests of external files by (path, size, mtime, ctime, inode), so a rerun with
//! unchanged inputs does not read gigabytes again. A `touch` changes mtime and costs one re-hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cache::atomic;
use crate::cache::digest::{self, Digest};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remembered {
    stamp: Stamp,
    digest: Digest,
}

/// The memo file in the cache, loaded once per command and saved if it changed.
pub struct HashMemo {
    file: PathBuf,
    entries: Mutex<(BTreeMap<PathBuf, Remembered>, bool)>,
    stats: Mutex<HashStats>,
}

/// What the memo saved and what it cost: kept in each run record, so a rerun can show that it read
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashStats {
    /// Files whose digest came from the memo.
    pub memo_hits: u64,
    /// Files read and hashed.
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

impl HashMemo {
    pub fn open(file: PathBuf) -> Self {
        // A damaged or missing memo only costs re-hashing, so it is never an error.
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            file,
            entries: Mutex::new((entries, false)),
            stats: Mutex::new(HashStats::default()),
        }
    }

    /// The digest of a file or folder, from the memo when its stamp is unchanged.
    pub fn digest(&self, path: &Path) -> Result<Digest> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let files = digest::list_files(path)?;
            let digests = files
                .iter()
                .map(|(rel, p)| Ok((rel.clone(), self.digest(p)?)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(digest::tree(&digests));
        }
        let key = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let stamp = Stamp::of(&meta);
        if let Some(r) = self.lock().0.get(&key).filter(|r| r.stamp == stamp) {
            self.count(|s| s.memo_hits += 1);
            return Ok(r.digest);
        }
        let digest = digest::file(path)?;
        self.count(|s| {
            s.files_hashed += 1;
            s.bytes_hashed += stamp.size;
        });
        let mut guard = self.lock();
        guard.0.insert(key, Remembered { stamp, digest });
        guard.1 = true;
        Ok(digest)
    }

    fn count(&self, f: impl FnOnce(&mut HashStats)) {
        f(&mut self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// What this memo has saved and read so far.
    pub fn stats(&self) -> HashStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<PathBuf, Remembered>, bool)> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the memo if anything was added. Entries for files that no longer exist are dropped.
    pub fn save(&self) -> Result<()> {
        let mut guard = self.lock();
        if !guard.1 {
            return Ok(());
        }
        guard.0.retain(|p, _| p.exists());
        let bytes = serde_json::to_vec(&guard.0).map_err(|e| Error::Corrupt {
            path: self.file.clone(),
            message: e.to_string(),
        })?;
        atomic::write(&self.file, &bytes)?;
        guard.1 = false;
        Ok(())
    }
}
