//! Where users find results: the current output of each stage, by name (`covseg show`), and the
//! outputs folder, `outputs/<stage>/<output>`, links into the cache refreshed after every run.
//!
//! The folder is covseg's: it records what it placed there in a manifest and removes only that.
//! Each link is made beside its place and renamed over it, so a reader sees the old result or the
//! new one, never none. The cache keeps a note of each outputs folder linking into it, so
//! `cache gc` keeps what a link points at (and never follows a link to delete through it).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::atomic;
use crate::cache::digest::Digest;
use crate::cache::hash_memo::HashMemo;
use crate::cache::store::{ArtifactStore, Entry};
use crate::error::{Diagnostic, Error, Result};
use crate::pipeline::config::Pipeline;
use crate::pipeline::dag::Dag;
use crate::running::plan::{self, State};

/// The manifest of an outputs folder: what covseg placed in it.
const MANIFEST: &str = ".covseg-outputs.json";
/// The cache's folder of notes naming the outputs folders that link into it.
const REGISTRY: &str = "outputs";

/// The current result of every stage whose current key has an entry in the cache, by stage.
pub fn current(
    pipeline: &Pipeline,
    dag: &Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
) -> Result<BTreeMap<usize, Entry>> {
    let rows = plan::plan(pipeline, dag, store, memo, dag.order(), &[])?;
    let mut entries = BTreeMap::new();
    for row in rows {
        if let State::Cached { key } = row.state
            && let Some(entry) = store.lookup(&key)?
        {
            entries.insert(row.stage, entry);
        }
    }
    Ok(entries)
}

/// What `covseg show` was asked for: `STAGE` or `STAGE.OUTPUT`.
pub struct Query<'a> {
    pub stage: &'a str,
    pub output: Option<&'a str>,
}

impl<'a> Query<'a> {
    /// Splits at the last dot that leaves a stage of the pipeline before it (stage names may hold
    /// dots).
    pub fn parse(text: &'a str, pipeline: &Pipeline) -> Self {
        if pipeline.index_of(text).is_some() {
            return Self {
                stage: text,
                output: None,
            };
        }
        match text.rsplit_once('.') {
            Some((stage, output)) => Self {
                stage,
                output: Some(output),
            },
            None => Self {
                stage: text,
                output: None,
            },
        }
    }
}

/// `covseg show`: the path of one output of a stage's current result, or with `json` all of
/// them. A stage without a current result is an error saying how to make one.
pub fn show(
    pipeline: &Pipeline,
    dag: &Dag,
    store: &ArtifactStore,
    memo: &HashMemo,
    query: &Query<'_>,
    json: bool,
) -> Result<String> {
    let index = pipeline.require_stage(query.stage)?;
    let stage = &pipeline.stages[index];
    let names: Vec<&str> = stage.kind.spec().outputs.iter().map(|o| o.name).collect();
    if let Some(output) = query.output
        && !names.contains(&output)
    {
        return Err(Diagnostic::new(format!(
            "stage `{}` ({}) has no output `{output}`",
            stage.name,
            stage.kind.spec().name
        ))
        .help(format!("its outputs are: {}", names.join(", ")))
        .into());
    }
    let order = dag.with_ancestors(&[index]);
    let rows = plan::plan(pipeline, dag, store, memo, &order, &[])?;
    let row = rows
        .into_iter()
        .find(|r| r.stage == index)
        .expect("the stage is in its own plan");
    let entry = match &row.state {
        State::Cached { key } => store.lookup(key)?,
        _ => None,
    };
    let Some(entry) = entry else {
        let why = match row.state {
            State::Stale { reasons, .. } => format!("it is stale: {}", reasons.join("; ")),
            State::Blocked { reason } => format!("it is blocked: {reason}"),
            State::Cached { .. } => "its result was removed from the cache meanwhile".to_owned(),
        };
        return Err(Diagnostic::new(format!(
            "stage `{}` has no current result: {why}",
            stage.name
        ))
        .help(format!(
            "run it first: covseg run --stage {} -p {}",
            stage.name,
            pipeline.path.display()
        ))
        .into());
    };
    let path_of = |name: &str| -> Result<PathBuf> {
        let path = entry.output_path(name).ok_or_else(|| Error::Corrupt {
            path: entry.dir.clone(),
            message: format!("the entry has no output `{name}`"),
        })?;
        // Without `..` or links in it (`examples/../cache/…`), for pasting into other tools.
        Ok(path
            .canonicalize()
            .or_else(|_| std::path::absolute(&path))
            .unwrap_or(path))
    };
    if json {
        let mut outputs = serde_json::Map::new();
        for name in &names {
            outputs.insert(
                (*name).to_owned(),
                serde_json::Value::String(path_of(name)?.to_string_lossy().into_owned()),
            );
        }
        let value = serde_json::json!({
            "stage": stage.name,
            "kind": stage.kind.spec().name,
            "key": entry.record.key.hex(),
            "outputs": outputs,
        });
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("JSON of strings")
        ));
    }
    let name = match (query.output, names.as_slice()) {
        (Some(name), _) => name,
        (None, [only]) => only,
        (None, _) => {
            return Err(Diagnostic::new(format!(
                "stage `{}` has {} outputs; name one",
                stage.name,
                names.len()
            ))
            .help(format!(
                "covseg show {}.OUTPUT, with OUTPUT one of: {} (or --json for all)",
                stage.name,
                names.join(", ")
            ))
            .into());
        }
    };
    Ok(format!("{}\n", path_of(name)?.display()))
}

/// How a result was placed in the outputs folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placed {
    /// A symbolic link into the cache.
    Link,
    /// A copy, where the filesystem has no symbolic links.
    Copy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placement {
    key: Digest,
    placed: Placed,
}

/// `.covseg-outputs.json`: the places covseg made, `stage/name` → what is there.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    cache: PathBuf,
    places: BTreeMap<String, Placement>,
}

/// What one refresh of the outputs folder did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    pub placed: usize,
    pub unchanged: usize,
    pub removed: usize,
}

/// The name an output gets in the folder: the output's name, with the extension of its file
/// (`metrics.json`, `per_slice.csv`; folders keep the bare name: `report`).
fn place_name(output: &str, entry: &Entry) -> String {
    let path = entry
        .record
        .outputs
        .get(output)
        .map(|o| o.path.as_str())
        .unwrap_or_default();
    let file = Path::new(path);
    let is_dir = entry
        .output_path(output)
        .is_some_and(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()));
    match file.extension() {
        Some(ext) if !is_dir => format!("{output}.{}", ext.to_string_lossy()),
        _ => output.to_owned(),
    }
}

/// Makes `dir` hold one place per output of every stage in `current`, and nothing else covseg
/// placed before. Records the folder in the cache so gc keeps the linked entries.
pub fn refresh(
    pipeline: &Pipeline,
    store: &ArtifactStore,
    current: &BTreeMap<usize, Entry>,
    dir: &Path,
) -> Result<Refreshed> {
    refresh_with(pipeline, store, current, dir, Placed::Link)
}

/// [`refresh`], placing copies instead of links when `prefer` is [`Placed::Copy`] (what happens
/// on its own where links cannot be made).
pub fn refresh_with(
    pipeline: &Pipeline,
    store: &ArtifactStore,
    current: &BTreeMap<usize, Entry>,
    dir: &Path,
    prefer: Placed,
) -> Result<Refreshed> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let manifest_path = dir.join(MANIFEST);
    let old: Manifest = read_json(&manifest_path).unwrap_or_default();
    let mut new = Manifest {
        cache: absolute(store.root()),
        places: BTreeMap::new(),
    };
    let mut done = Refreshed::default();
    for (&i, entry) in current {
        let stage = &pipeline.stages[i];
        for spec in stage.kind.spec().outputs {
            let Some(target) = entry.output_path(spec.name) else {
                continue;
            };
            let name = format!("{}/{}", stage.name, place_name(spec.name, entry));
            let place = dir.join(&name);
            let key = entry.record.key;
            if let Some(before) = old.places.get(&name)
                && before.key == key
                && is_in_place(&place, &target, before.placed)
            {
                new.places.insert(name, before.clone());
                done.unchanged += 1;
                continue;
            }
            let placed = place_at(&place, &target, prefer)?;
            new.places.insert(name, Placement { key, placed });
            done.placed += 1;
        }
    }
    for name in old.places.keys() {
        if !new.places.contains_key(name) {
            remove_place(&dir.join(name))?;
            done.removed += 1;
        }
    }
    // Stage folders left empty (a stage renamed or removed) go too; a folder the user put
    // something in stays.
    for name in old.places.keys() {
        if let Some((stage, _)) = name.split_once('/') {
            let _ = std::fs::remove_dir(dir.join(stage));
        }
    }
    atomic::write(&manifest_path, &to_json(&new))?;
    register(store, dir)?;
    Ok(done)
}

/// Whether `place` already shows `target` the way it was placed.
fn is_in_place(place: &Path, target: &Path, placed: Placed) -> bool {
    match placed {
        Placed::Link => std::fs::read_link(place)
            .ok()
            .and_then(|link| place.parent().map(|p| p.join(link)))
            .and_then(|t| t.canonicalize().ok())
            .is_some_and(|t| Some(t) == target.canonicalize().ok()),
        Placed::Copy => place.exists(),
    }
}

/// Puts `target` at `place` (a link, or a copy where links are refused) by renaming a fresh one
/// over it.
fn place_at(place: &Path, target: &Path, prefer: Placed) -> Result<Placed> {
    let parent = place.parent().expect("a place is under the outputs folder");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let file_name = place
        .file_name()
        .expect("a place has a name")
        .to_string_lossy();
    let fresh = parent.join(format!(".{file_name}.new-{}", std::process::id()));
    remove_place(&fresh)?;
    let placed = match prefer {
        Placed::Link => match symlink(&relative(parent, target), &fresh) {
            Ok(()) => Placed::Link,
            Err(_) => {
                copy_tree(target, &fresh)?;
                Placed::Copy
            }
        },
        Placed::Copy => {
            copy_tree(target, &fresh)?;
            Placed::Copy
        }
    };
    // A folder cannot be renamed over a link, nor anything over a folder (an earlier copy): what
    // is there moves aside first. Links, and copies of files, replace in one rename.
    let is_real_dir = |p: &Path| p.symlink_metadata().is_ok_and(|m| m.is_dir());
    if place.symlink_metadata().is_ok() && (is_real_dir(place) || is_real_dir(&fresh)) {
        let aside = parent.join(format!(".{file_name}.old-{}", std::process::id()));
        std::fs::rename(place, &aside).map_err(|e| Error::io(place, e))?;
        std::fs::rename(&fresh, place).map_err(|e| Error::io(place, e))?;
        remove_place(&aside)?;
    } else {
        std::fs::rename(&fresh, place).map_err(|e| Error::io(place, e))?;
    }
    Ok(placed)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let absolute = link.parent().map(|p| p.join(target)).unwrap_or_default();
    if absolute.is_dir() {
        std::os::windows::fs::symlink_dir(target, link)
    } else {
        std::os::windows::fs::symlink_file(target, link)
    }
}

/// Removes what covseg placed: a link itself (never what it points at), or a copy.
fn remove_place(place: &Path) -> Result<()> {
    match place.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(place).map_err(|e| Error::io(place, e)),
        Ok(_) => std::fs::remove_file(place).map_err(|e| Error::io(place, e)),
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
        for item in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
            let item = item.map_err(|e| Error::io(from, e))?;
            copy_tree(&item.path(), &to.join(item.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| Error::io(to, e))
    }
}

fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// `to` as seen from the folder `from` (`../../cache/objects/…`), so the project folder can move
/// without breaking the links; `to` itself where the two share no root.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (absolute(from), absolute(to));
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return to;
    }
    let mut path = PathBuf::new();
    for _ in common..a.len() {
        path.push("..");
    }
    for c in &b[common..] {
        path.push(c);
    }
    path
}

/// The cache's note that `dir` links into it: `outputs/<digest of the folder's path>.json`.
fn register(store: &ArtifactStore, dir: &Path) -> Result<()> {
    let dir = absolute(dir);
    let notes = store.root().join(REGISTRY);
    std::fs::create_dir_all(&notes).map_err(|e| Error::io(&notes, e))?;
    let name = blake3::hash(dir.to_string_lossy().as_bytes()).to_hex();
    let note = notes.join(format!("{}.json", &name[..16]));
    if read_json::<PathBuf>(&note).as_ref() == Some(&dir) {
        return Ok(());
    }
    atomic::write(&note, &to_json(&dir))
}

/// The keys of the cache's entries that an outputs folder links to now. gc keeps them. A note
/// whose folder is gone, or no longer links here, is removed (unless `dry_run`).
pub fn linked_keys(store: &ArtifactStore, dry_run: bool) -> Vec<Digest> {
    let notes = store.root().join(REGISTRY);
    let cache = absolute(store.root());
    let mut keys = Vec::new();
    for item in std::fs::read_dir(&notes).into_iter().flatten().flatten() {
        let note = item.path();
        let dir: Option<PathBuf> = read_json(&note);
        let manifest: Option<Manifest> = dir.as_ref().and_then(|d| read_json(&d.join(MANIFEST)));
        let live: Vec<Digest> = match (&dir, &manifest) {
            (Some(dir), Some(m)) if m.cache == cache => m
                .places
                .iter()
                .filter(|(_, p)| p.placed == Placed::Link)
                .filter(|(name, p)| links_to_entry(&dir.join(name), &cache, &p.key))
                .map(|(_, p)| p.key)
                .collect(),
            _ => Vec::new(),
        };
        if live.is_empty() && manifest.is_none_or(|m| m.cache != cache) && !dry_run {
            let _ = std::fs::remove_file(&note);
        }
        keys.extend(live);
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Whether the link at `place` still points into the entry of `key` in the cache at `cache`.
fn links_to_entry(place: &Path, cache: &Path, key: &Digest) -> bool {
    let Ok(link) = std::fs::read_link(place) else {
        return false;
    };
    let target = place.parent().map(|p| p.join(link)).unwrap_or_default();
    let Ok(target) = target.canonicalize() else {
        return false;
    };
    target
        .strip_prefix(cache)
        .ok()
        .and_then(|rest| rest.components().nth(1))
        .is_some_and(|c| c.as_os_str().to_string_lossy() == key.hex())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON of plain data");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_folder() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (
            root.path().join("outputs/train"),
            root.path().join("cache/objects/k/out"),
        );
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(
            relative(&a, &b.join("bundle")),
            Path::new("../../cache/objects/k/out/bundle")
        );
    }

    #[test]
    fn a_place_is_replaced_whole_by_a_link_or_a_copy() {
        let root = tempfile::tempdir().unwrap();
        let (old, new) = (root.path().join("old"), root.path().join("new"));
        for (dir, text) in [(&old, "old"), (&new, "new")] {
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("sub/file.txt"), text).unwrap();
        }
        let place = root.path().join("outputs/stage/report");
        let read = || std::fs::read_to_string(place.join("sub/file.txt")).unwrap();
        assert_eq!(place_at(&place, &old, Placed::Copy).unwrap(), Placed::Copy);
        assert_eq!(read(), "old");
        assert!(is_in_place(&place, &old, Placed::Copy));
        // A copied folder gives way to a link, and the link to a copy again.
        assert_eq!(place_at(&place, &new, Placed::Link).unwrap(), Placed::Link);
        assert_eq!(read(), "new");
        assert!(is_in_place(&place, &new, Placed::Link));
        assert!(!is_in_place(&place, &old, Placed::Link));
        assert_eq!(place_at(&place, &old, Placed::Copy).unwrap(), Placed::Copy);
        assert_eq!(read(), "old");
        assert!(place.symlink_metadata().unwrap().is_dir());
        // Removing a link never touches what it points at.
        place_at(&place, &new, Placed::Link).unwrap();
        remove_place(&place).unwrap();
        assert!(!place.exists());
        assert_eq!(
            std::fs::read_to_string(new.join("sub/file.txt")).unwrap(),
            "new"
        );
        let leftovers: Vec<_> = std::fs::read_dir(place.parent().unwrap())
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "no temporary names left behind");
    }
}
