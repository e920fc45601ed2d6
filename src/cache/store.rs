//! The artifact store under `cache/`. A stage writes into `tmp/`; the engine syncs its files, writes
//! `entry.json`, and renames the folder to `objects/<key>` in one step, so a killed run leaves only
//! `tmp/` debris that the next holder of the key's lock removes. Entries are never changed in place.
//!
//! ```text
//! cache/objects/<key>/entry.json   what made the entry and the digest of every output file
//! cache/objects/<key>/out/…        the outputs (`out.<n>/` for a result that replaced one)
//! cache/tmp/<key>.<pid>.<n>/       outputs being written
//! cache/work/<key>/                a stage's resumable scratch (checkpoints), kept across kills
//! cache/locks/<key>.lock           one OS lock per key: one writer at a time, across processes
//! cache/runs/<time>-<pid>.json     one record per run, written last
//! cache/gc.lock                    runs hold it shared, gc exclusive
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::cache::atomic;
use crate::cache::digest::{self, Digest};
use crate::cache::key::{InputSources, KeyParts};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub bytes: u64,
    pub digest: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    /// File or folder name under `out/`.
    pub path: String,
    /// Digest of the file, or of the folder's tree; downstream keys use it.
    pub digest: Digest,
    pub files: Vec<FileRecord>,
}

/// `entry.json`: how an entry was made and what it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryRecord {
    pub key: Digest,
    pub stage: String,
    pub pipeline: String,
    pub parts: KeyParts,
    pub sources: InputSources,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub created_unix_ms: u128,
    pub seconds: f64,
    /// The folder under the entry that holds the outputs: `out`, or `out.<n>` for a result that
    /// replaced an earlier one (`--force`), published beside it so a reader of the old one is
    /// never cut short.
    #[serde(default = "default_out", skip_serializing_if = "is_default_out")]
    pub out: String,
}

fn default_out() -> String {
    "out".to_owned()
}

fn is_default_out(out: &str) -> bool {
    out == "out"
}

impl EntryRecord {
    pub fn bytes(&self) -> u64 {
        self.outputs
            .values()
            .flat_map(|o| &o.files)
            .map(|f| f.bytes)
            .sum()
    }
}

/// A complete entry of the store.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub record: EntryRecord,
}

impl Entry {
    /// The folder of the outputs.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join(&self.record.out)
    }

    pub fn output_path(&self, name: &str) -> Option<PathBuf> {
        self.record
            .outputs
            .get(name)
            .map(|o| self.out_dir().join(&o.path))
    }
}

/// Holds a key's lock; dropping it releases the lock.
pub struct KeyLock {
    _file: File,
}

/// A folder being written for a key; removed on drop unless published.
pub struct Staging {
    dir: PathBuf,
    key: Digest,
    published: bool,
}

impl Staging {
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct ArtifactStore {
    root: PathBuf,
    /// Output folders this process replaced (`--force`); removed by [`Self::sweep_replaced`] once
    /// no other process can be reading them.
    replaced: std::sync::Mutex<Vec<PathBuf>>,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl ArtifactStore {
    /// Opens the store, creating its folders when `create` is set.
    pub fn open(root: &Path, create: bool) -> Result<Self> {
        if create {
            for sub in ["objects", "tmp", "locks", "runs", "work"] {
                let dir = root.join(sub);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            let tag = root.join("CACHEDIR.TAG");
            if !tag.exists() {
                atomic::write(&tag, b"Signature: 8a477f597d28d172789f06886806bc55\n# covseg's artifact cache; see `covseg cache --help`.\n")?;
            }
        }
        Ok(Self {
            root: root.to_owned(),
            replaced: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn exists(&self) -> bool {
        self.root.join("objects").is_dir()
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    pub fn memo_file(&self) -> PathBuf {
        self.root.join("hashes.json")
    }

    fn object_dir(&self, key: &Digest) -> PathBuf {
        self.root.join("objects").join(key.hex())
    }

    /// The complete entry for a key, if there is one.
    pub fn lookup(&self, key: &Digest) -> Result<Option<Entry>> {
        let dir = self.object_dir(key);
        let path = dir.join("entry.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let record: EntryRecord =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        message: format!(
                            "unreadable entry record: {e}; run `covseg cache verify --fix`"
                        ),
                    })?;
                Ok(Some(Entry { dir, record }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn lock_file(&self, path: &Path) -> Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))
    }

    /// Takes the key's lock, waiting for another process that holds it; `on_wait` runs once if so.
    pub fn lock_key(&self, key: &Digest, on_wait: impl FnOnce()) -> Result<KeyLock> {
        let path = self.root.join("locks").join(format!("{}.lock", key.hex()));
        let file = self.lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|e| Error::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        Ok(KeyLock { _file: file })
    }

    /// Takes the key's lock if it is free; `None` when another process holds it.
    pub fn try_lock_key(&self, key: &Digest) -> Result<Option<KeyLock>> {
        let path = self.root.join("locks").join(format!("{}.lock", key.hex()));
        let file = self.lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// Holds the store against `gc` for as long as the returned file lives.
    pub fn lock_shared(&self) -> Result<File> {
        let path = self.root.join("gc.lock");
        let file = self.lock_file(&path)?;
        file.lock_shared().map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    /// Excludes every run while `gc` deletes; fails fast instead of waiting on a long run.
    pub fn lock_exclusive(&self) -> Result<Option<File>> {
        let path = self.root.join("gc.lock");
        let file = self.lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// A fresh staging folder for a key. The caller holds the key's lock, so any older staging
    /// folder of the key is debris from a killed run and is removed first.
    pub fn stage(&self, key: &Digest, _lock: &KeyLock) -> Result<Staging> {
        self.remove_debris(key)?;
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{}.{}.{n}", key.hex(), std::process::id()));
        let out = dir.join("out");
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        Ok(Staging {
            dir,
            key: *key,
            published: false,
        })
    }

    fn remove_debris(&self, key: &Digest) -> Result<()> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{}.", key.hex());
        for entry in std::fs::read_dir(&tmp)
            .map_err(|e| Error::io(&tmp, e))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// The resumable scratch folder of a key, created on demand. Only the holder of the key's
    /// lock uses it, so a run that was killed leaves it for the next one to resume from.
    pub fn work_dir(&self, key: &Digest, _lock: &KeyLock) -> Result<PathBuf> {
        let dir = self.root.join("work").join(key.hex());
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Drops a key's scratch folder once its result is published.
    pub fn drop_work_dir(&self, key: &Digest) {
        let _ = std::fs::remove_dir_all(self.root.join("work").join(key.hex()));
    }

    /// Digests and syncs what the stage wrote, writes `entry.json`, and moves the folder into place.
    /// An existing entry for the key (a forced rerun) is replaced: the new outputs are published
    /// beside the old ones, which are never deleted under a reader.
    pub fn publish(
        &self,
        mut staging: Staging,
        outputs: &[(&str, &str)],
        mut record: EntryRecord,
    ) -> Result<Entry> {
        let out = staging.out_dir();
        for (name, file) in outputs {
            let path = out.join(file);
            let meta = std::fs::metadata(&path).map_err(|_| Error::Corrupt {
                path: path.clone(),
                message: format!("the stage finished without writing its output `{name}`"),
            })?;
            let files: Vec<FileRecord> = if meta.is_dir() {
                digest::list_files(&path)?
                    .into_iter()
                    .map(|(rel, p)| {
                        Ok(FileRecord {
                            bytes: file_len(&p)?,
                            digest: digest::file(&p)?,
                            path: format!("{file}/{rel}"),
                        })
                    })
                    .collect::<Result<_>>()?
            } else {
                vec![FileRecord {
                    path: (*file).to_owned(),
                    bytes: meta.len(),
                    digest: digest::file(&path)?,
                }]
            };
            let digest = if meta.is_dir() {
                let prefix = format!("{file}/");
                let tree: Vec<(String, Digest)> = files
                    .iter()
                    .map(|f| {
                        (
                            f.path.strip_prefix(&prefix).unwrap_or(&f.path).to_owned(),
                            f.digest,
                        )
                    })
                    .collect();
                digest::tree(&tree)
            } else {
                files[0].digest
            };
            record.outputs.insert(
                (*name).to_owned(),
                OutputRecord {
                    path: (*file).to_owned(),
                    digest,
                    files,
                },
            );
        }
        atomic::sync_tree(&out)?;
        let target = self.object_dir(&staging.key);
        // An unreadable record is replaced like any other.
        let previous = self.lookup(&staging.key).unwrap_or_default();
        if target.exists() {
            // A rerun of an existing key: the new outputs go beside the old ones, then the record
            // switches to them in one rename. Readers of the old outputs keep them until no other
            // process can be reading (see `sweep_replaced`).
            let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
            record.out = format!("out.{}.{}.{n}", now_unix_ms(), std::process::id());
            let new_out = target.join(&record.out);
            std::fs::rename(&out, &new_out).map_err(|e| Error::io(&new_out, e))?;
            atomic::sync_dir(&target)?;
            let bytes = record_bytes(&record, &target)?;
            atomic::write(&target.join("entry.json"), &bytes)?;
            let mut replaced = self.lock_replaced();
            match previous {
                Some(old) => replaced.push(old.out_dir()),
                None => replaced.extend(stray_outputs(&target, &record.out)),
            }
            drop(replaced);
            // The staging folder is empty now; dropping it removes it.
            drop(staging);
            return Ok(Entry {
                dir: target,
                record,
            });
        }
        record.out = default_out();
        let bytes = record_bytes(&record, &staging.dir)?;
        atomic::write(&staging.dir.join("entry.json"), &bytes)?;
        std::fs::rename(&staging.dir, &target).map_err(|e| Error::io(&target, e))?;
        staging.published = true;
        atomic::sync_dir(&self.root.join("objects"))?;
        Ok(Entry {
            dir: target,
            record,
        })
    }

    fn lock_replaced(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.replaced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the output folders this process replaced, if no other process holds the cache
    /// (every run holds the gc lock shared while it reads entries). The caller must not hold the
    /// gc lock itself. Left in place otherwise; `cache gc` removes them later.
    pub fn sweep_replaced(&self) -> Result<usize> {
        let replaced = std::mem::take(&mut *self.lock_replaced());
        if replaced.is_empty() {
            return Ok(0);
        }
        let Some(_alone) = self.lock_exclusive()? else {
            return Ok(0);
        };
        let mut removed = 0;
        for dir in replaced {
            if std::fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes output folders of an entry that its record does not name (replaced results, or a
    /// replacement killed before its record switched); gc calls it with every run excluded.
    pub fn remove_stray_outputs(&self, entry: &Entry) -> Result<usize> {
        let stray = stray_outputs(&entry.dir, &entry.record.out);
        for dir in &stray {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(stray.len())
    }

    /// Every complete entry, newest first. Folders without a readable record are returned as errors.
    pub fn entries(&self) -> Result<Vec<std::result::Result<Entry, (PathBuf, String)>>> {
        let objects = self.root.join("objects");
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir(&objects) else {
            return Ok(out);
        };
        for item in dir.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            match Digest::from_hex(&name) {
                Some(key) => match self.lookup(&key) {
                    Ok(Some(entry)) => out.push(Ok(entry)),
                    Ok(None) => out.push(Err((item.path(), "entry.json is missing".to_owned()))),
                    Err(e) => out.push(Err((item.path(), e.to_string()))),
                },
                None => out.push(Err((
                    item.path(),
                    "not a covseg entry (name is not a key)".to_owned(),
                ))),
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.as_ref().map_or(0, |e| e.record.created_unix_ms)));
        Ok(out)
    }

    /// Re-hashes an entry's files; returns one line per problem.
    pub fn verify(&self, entry: &Entry) -> Vec<String> {
        let mut problems = Vec::new();
        let out = entry.out_dir();
        let mut listed = std::collections::BTreeSet::new();
        for output in entry.record.outputs.values() {
            for f in &output.files {
                listed.insert(f.path.clone());
                let path = out.join(&f.path);
                match digest::file(&path) {
                    Ok(d) if d == f.digest => {}
                    Ok(_) => problems.push(format!(
                        "{}: content differs from its recorded digest",
                        f.path
                    )),
                    Err(_) => problems.push(format!("{}: missing or unreadable", f.path)),
                }
            }
        }
        if let Ok(files) = digest::list_files(&out) {
            problems.extend(
                files
                    .into_iter()
                    .filter(|(rel, _)| !listed.contains(rel))
                    .map(|(rel, _)| format!("{rel}: not written by the stage")),
            );
        }
        problems
    }

    /// Deletes an entry (first moved out of `objects/`, so a crash never leaves half an entry there).
    pub fn remove(&self, dir: &Path) -> Result<()> {
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let trash = self
            .root
            .join("tmp")
            .join(format!("{name}.removed.{}", std::process::id()));
        std::fs::rename(dir, &trash).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))
    }

    /// Removes scratch folders of keys no run holds; gc calls it with every run excluded.
    pub fn clean_work(&self) -> Result<usize> {
        let work = self.root.join("work");
        let mut removed = 0;
        for item in std::fs::read_dir(&work).into_iter().flatten().flatten() {
            let path = item.path();
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes staging debris no live process owns (its key lock is free); returns how many.
    pub fn clean_tmp(&self) -> Result<usize> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        let Ok(dir) = std::fs::read_dir(&tmp) else {
            return Ok(0);
        };
        for item in dir.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let key = name.split('.').next().and_then(Digest::from_hex);
            let free = match key {
                Some(key) => {
                    let path = self.root.join("locks").join(format!("{}.lock", key.hex()));
                    let file = self.lock_file(&path)?;
                    file.try_lock().is_ok()
                }
                None => true,
            };
            if free {
                let path = item.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn record_bytes(record: &EntryRecord, dir: &Path) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(record).map_err(|e| Error::Corrupt {
        path: dir.to_owned(),
        message: e.to_string(),
    })
}

/// Output folders (`out`, `out.*`) of an entry folder other than `current`.
fn stray_outputs(dir: &Path, current: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|item| {
            let name = item.file_name().to_string_lossy().into_owned();
            name != current && (name == "out" || name.starts_with("out."))
        })
        .map(|item| item.path())
        .collect()
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::io(path, e))
}
