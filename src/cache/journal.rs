//! An append-only journal: one JSON object per line, each synced to disk before `append` returns,
//! written by one process only. A line torn by a kill is dropped (and cut off) when the journal
//! is opened again, so what it holds is always what was recorded whole.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal and returns the events it holds, oldest first.
    pub fn open<E: DeserializeOwned>(path: &Path) -> Result<(Self, Vec<E>)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        // Only newline-terminated lines were recorded whole.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut events = Vec::new();
        for (n, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let event = serde_json::from_slice(line).map_err(|e| Error::Corrupt {
                path: path.to_owned(),
                message: format!(
                    "line {}: {e}; covseg writes this file, so it was changed by hand: delete it to start over",
                    n + 1
                ),
            })?;
            events.push(event);
        }
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(whole as u64).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent() {
            crate::cache::atomic::sync_dir(dir)?;
        }
        Ok((
            Self {
                path: path.to_owned(),
                file,
            },
            events,
        ))
    }

    /// Appends one event and syncs it.
    pub fn append<E: Serialize>(&mut self, event: &E) -> Result<()> {
        let mut line = serde_json::to_vec(event).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_whole_lines_and_drops_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        {
            let (mut j, events) = Journal::open::<u32>(&path).unwrap();
            assert!(events.is_empty());
            j.append(&1u32).unwrap();
            j.append(&2u32).unwrap();
        }
        // A kill in the middle of a write.
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(b"3").unwrap();
        drop(f);
        let (mut j, events) = Journal::open::<u32>(&path).unwrap();
        assert_eq!(events, vec![1, 2]);
        j.append(&4u32).unwrap();
        let (_, events) = Journal::open::<u32>(&path).unwrap();
        assert_eq!(events, vec![1, 2, 4]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n4\n");
    }

    #[test]
    fn a_line_changed_by_hand_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, "1\nx\n").unwrap();
        let message = Journal::open::<u32>(&path).err().unwrap().to_string();
        assert!(message.contains("line 2"), "{message}");
    }
}
