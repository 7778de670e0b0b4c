//! The daemon's state folder: `checkpoint.json` (verdict rule, trigger, model version, cycle
//! records), written atomically.
//!
//! This module owns the file format's location and the atomic write: temp file in the same
//! folder, fsync, rename over the old file, fsync the folder. A crash leaves either the old
//! or the new checkpoint, never a torn one; a leftover temp file is ignored.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::stream::engine::{Checkpoint, EngineError};

/// File name of the checkpoint inside the state folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

fn err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Path of the checkpoint in `dir`.
pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Write `bytes` to `path` atomically (temp + fsync + rename + fsync of the folder).
///
/// # Errors
/// [`EngineError::Checkpoint`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| err(&tmp, e))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))?;
    Ok(())
}

/// Save `cp` into `dir`.
///
/// # Errors
/// [`EngineError::Checkpoint`].
pub fn save(dir: &Path, cp: &Checkpoint) -> Result<(), EngineError> {
    let path = checkpoint_path(dir);
    let bytes = serde_json::to_vec_pretty(cp).map_err(|e| err(&path, e))?;
    write_atomic(&path, &bytes)
}

/// Load the checkpoint from `dir`, if there is one.
///
/// # Errors
/// [`EngineError::Checkpoint`] when the file exists but cannot be read or parsed.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>, EngineError> {
    let path = checkpoint_path(dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            err(
                &path,
                format!("unreadable checkpoint ({e}); move it away to start fresh"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::trigger::NoiseTrigger;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let mut cp = Checkpoint {
            model: "m".into(),
            model_version: 3,
            gmm: None,
            trigger: NoiseTrigger::new(crate::stream::trigger::TriggerParams::default()),
            verdicts: 10,
            cycles: vec![],
        };
        cp.trigger.observe(true);
        save(dir.path(), &cp).unwrap();
        cp.model_version = 4;
        save(dir.path(), &cp).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.model_version, 4);
        assert_eq!(back.trigger.window_len(), 1);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
        std::fs::write(checkpoint_path(dir.path()), b"{").unwrap();
        assert!(load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("move it away"));
    }
}
