//! Building one entry of the store, the only place that goes lock → look up → stage → run →
//! publish. Pipeline stages (the executor) and tuning trials (`covseg trial`) both build through
//! here, so "the train stage is a cache hit of the best trial" cannot depend on two copies
//! agreeing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::cache::key::{InputSources, KeyParts};
use crate::cache::store::{self, ArtifactStore, Entry, EntryRecord};
use crate::pipeline::kind::StageFailure;

/// What is built: the key's parts and what the entry records about where it came from.
pub struct Target<'a> {
    pub parts: &'a KeyParts,
    pub sources: &'a InputSources,
    /// Shown in `cache ls`: the stage's name (a trial's is `tune/trial-3`).
    pub stage: &'a str,
    pub pipeline: &'a str,
    /// (name, file) of every declared output.
    pub outputs: &'a [(&'static str, &'static str)],
}

/// What a build found or made.
pub enum Built {
    /// The entry was in the store.
    Hit(Entry),
    /// The work ran and its result was published.
    Ran(Entry),
    /// The work stopped before its result was complete (a trial segment); nothing was published,
    /// and the key's work folder keeps what it needs to go on.
    Unfinished,
}

/// Finds the entry of `target` or makes it with `work(out_dir, work_dir)`, which returns whether
/// the result is complete. With `force` an existing entry is rebuilt and replaced. `on_wait` runs
/// once when another process holds the key.
pub fn build(
    store: &ArtifactStore,
    target: &Target<'_>,
    force: bool,
    on_wait: impl FnOnce(),
    work: impl FnOnce(&Path, &Path) -> Result<bool, StageFailure>,
) -> Result<Built, StageFailure> {
    let key = target.parts.key();
    // Entries are published whole in one rename, so a lookup needs no lock.
    if !force && let Some(entry) = store.lookup(&key)? {
        return Ok(Built::Hit(entry));
    }
    let lock = store.lock_key(&key, on_wait)?;
    // Another process may have built it while this one waited.
    if !force && let Some(entry) = store.lookup(&key)? {
        return Ok(Built::Hit(entry));
    }
    let staging = store.stage(&key, &lock)?;
    let out_dir = staging.out_dir();
    let work_dir = store.work_dir(&key, &lock)?;
    let started = Instant::now();
    if !work(&out_dir, &work_dir)? {
        return Ok(Built::Unfinished);
    }
    let record = EntryRecord {
        key,
        stage: target.stage.to_owned(),
        pipeline: target.pipeline.to_owned(),
        parts: target.parts.clone(),
        sources: target.sources.clone(),
        outputs: BTreeMap::new(),
        created_unix_ms: store::now_unix_ms(),
        seconds: started.elapsed().as_secs_f64(),
        out: String::new(),
    };
    let entry = store.publish(staging, target.outputs, record)?;
    store.drop_work_dir(&key);
    drop(lock);
    Ok(Built::Ran(entry))
}
