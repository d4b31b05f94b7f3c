//! Durable rollout status in local mode: one JSON file per rollout, written atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::rollout::RolloutStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {file} cannot be read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {file} is corrupt ({message}); tidegate will not replace it: \
         fix it or move it away to start that rollout from scratch"
    )]
    Corrupt { file: PathBuf, message: String },
    #[error("state file {file} cannot be written: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// `<dir>/<route>.json`, each replaced whole: temp file, fsync, rename, fsync of the directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, route: &str) -> PathBuf {
        self.dir.join(format!("{route}.json"))
    }

    /// Every saved status, by route. Any unreadable or corrupt file stops the load: state is
    /// never silently replaced.
    pub fn load_all(&self) -> Result<BTreeMap<String, RolloutStatus>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::Dir {
                dir: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let status = load_file(&path)?;
            out.insert(status.route.clone(), status);
        }
        Ok(out)
    }

    /// Writes the status so that a crash at any instant leaves either the old or the new file.
    pub fn save(&self, status: &RolloutStatus) -> Result<(), StoreError> {
        let file = self.file(&status.route);
        let err = |source| StoreError::Write {
            file: file.clone(),
            source,
        };
        let tmp = self.dir.join(format!(".{}.json.tmp", status.route));
        let json = serde_json::to_vec_pretty(status).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &file).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

fn load_file(path: &Path) -> Result<RolloutStatus, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut status: RolloutStatus =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let expected = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if status.route != expected {
        return Err(StoreError::Corrupt {
            file: path.to_path_buf(),
            message: format!("it holds route `{}`", status.route),
        });
    }
    // Measurements asked for by the previous process will never come back.
    status.forget_pending();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("state")).unwrap();
        let mut s = RolloutStatus::new("shop", "v1", 42);
        s.canary = Some("v2".into());
        s.canary_weight = 1250;
        store.save(&s).unwrap();
        s.canary_weight = 2500;
        store.save(&s).unwrap();
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["shop"], s);
        assert!(!dir.path().join("state/.shop.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_stops_the_load_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("shop.json"), b"{\"route\": \"shop\", trunc").unwrap();
        let e = store.load_all().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("shop.json is corrupt"), "{text}");
        assert!(text.contains("will not replace it"), "{text}");
        assert_eq!(
            std::fs::read(dir.path().join("shop.json")).unwrap(),
            b"{\"route\": \"shop\", trunc"
        );
    }
}
