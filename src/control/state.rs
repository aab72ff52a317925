//! The state file: the operator's remedies, kept across restarts.
//!
//! Every write is atomic (temp file, fsync, rename, fsync of the directory),
//! so a crash at any moment leaves the old file or the new one, never a torn
//! one. A file that cannot be read is moved aside, not trusted and not lost.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Remedies;

/// What loading the state file found.
#[derive(Debug)]
pub enum Loaded {
    /// The file held this state.
    Read(Remedies),
    /// There was no file yet.
    Missing,
    /// The file was unreadable or corrupt; it was moved to `moved_to`.
    Quarantined {
        why: String,
        moved_to: Option<PathBuf>,
    },
}

/// Reads the state file; a corrupt one is renamed
/// `<name>.corrupt-<unix time>` and reported.
pub fn load(path: &Path) -> Loaded {
    remove_stale_temps(path);
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return quarantine(path, format!("cannot read: {e}")),
    };
    match serde_json::from_slice::<Remedies>(&text) {
        Ok(remedies) => Loaded::Read(remedies),
        Err(e) => quarantine(path, format!("corrupt: {e}")),
    }
}

/// Deletes temp files a crash left mid-write (`<name>.tmp-<pid>`); the
/// state file itself is whole either way.
fn remove_stale_temps(path: &Path) {
    let Some(name) = path.file_name() else {
        return;
    };
    let dir = dir_of(path);
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn quarantine(path: &Path, why: String) -> Loaded {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", super::unix_now()));
    let aside = PathBuf::from(name);
    let moved_to = fs::rename(path, &aside).ok().map(|()| aside);
    Loaded::Quarantined { why, moved_to }
}

/// Writes the state atomically; returns only once it is durable.
pub fn save(path: &Path, remedies: &Remedies) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(remedies).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir_of(path))?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ContentBlock, ManualBan};

    fn sample() -> Remedies {
        let mut r = Remedies::default();
        r.add_ban(ManualBan {
            cidr: "192.0.2.0/24".parse().unwrap(),
            until: None,
            reason: "abuse report".into(),
            created: 1,
            stamp: None,
        });
        r.add_block(ContentBlock {
            app: "live".into(),
            stream: "film-*".into(),
            reason: "dmca".into(),
            created: 2,
            stamp: None,
        });
        r
    }

    #[test]
    fn saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(matches!(load(&path), Loaded::Missing));
        save(&path, &sample()).unwrap();
        match load(&path) {
            Loaded::Read(r) => assert_eq!(r, sample()),
            other => panic!("{other:?}"),
        }
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        save(&path, &sample()).unwrap();
        fs::write(dir.path().join("state.json.tmp-999"), b"{\"ba").unwrap();
        assert!(matches!(load(&path), Loaded::Read(_)));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{\"bans\": [tor").unwrap();
        match load(&path) {
            Loaded::Quarantined {
                moved_to: Some(aside),
                why,
            } => {
                assert!(why.contains("corrupt"), "{why}");
                assert!(aside.display().to_string().contains("state.json.corrupt-"));
                assert_eq!(fs::read(&aside).unwrap(), b"{\"bans\": [tor");
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
    }
}
