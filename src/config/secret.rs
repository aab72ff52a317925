//! Secrets, and the files they are read from: an app's `keys_file` and
//! `token_secret_file`, and the admin API's `token_file`. Relative paths
//! are relative to the config file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::locate::{Invalid, PathSeg};
use super::{check_at, resolve};

/// A secret from the config: never shown by `Debug`, so it cannot reach a
/// log by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Reads a secret (`what`: "token", "secret") from a file named at
/// `key`: trimmed, and at least 16 bytes.
pub(super) fn read_secret(
    base: Option<&Path>,
    file: &Path,
    key: Vec<PathSeg>,
    what: &str,
) -> Result<Secret, Invalid> {
    let (_, text) = read(base, file, &key)?;
    let secret = text.trim();
    check_at(
        secret.len() >= 16,
        key,
        &format!("the {what} must be at least 16 bytes"),
    )?;
    Ok(Secret(secret.to_string()))
}

/// Reads a keys file named at `key` (see [`parse_keys_file`]).
pub(super) fn read_keys(
    base: Option<&Path>,
    file: &Path,
    key: Vec<PathSeg>,
) -> Result<BTreeMap<String, Secret>, Invalid> {
    let (path, text) = read(base, file, &key)?;
    parse_keys_file(&text).map_err(|(line, why)| Invalid {
        path: key,
        why: format!("{}:{line}: {why}", path.display()),
    })
}

/// The text of a file named at `key`, and the path it was read from.
fn read(base: Option<&Path>, file: &Path, key: &[PathSeg]) -> Result<(PathBuf, String), Invalid> {
    let path = resolve(base, file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(e) => Err(Invalid {
            path: key.to_vec(),
            why: format!("cannot read {}: {e}", path.display()),
        }),
    }
}

/// Parses `stream = key` lines; `#` starts a comment. Errors carry the
/// 1-based line number.
pub fn parse_keys_file(text: &str) -> Result<BTreeMap<String, Secret>, (usize, String)> {
    let mut keys = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((stream, key)) = line.split_once('=') else {
            return Err((i + 1, "expected \"stream = key\"".into()));
        };
        let (stream, key) = (stream.trim(), key.trim());
        if stream.is_empty() || key.is_empty() || stream.contains(['?', '/', ' ']) {
            return Err((
                i + 1,
                "expected \"stream = key\" with a plain stream name and a key".into(),
            ));
        }
        if keys
            .insert(stream.to_string(), Secret(key.to_string()))
            .is_some()
        {
            return Err((i + 1, format!("stream {stream:?} has two keys")));
        }
    }
    Ok(keys)
}
