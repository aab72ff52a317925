//! Where in the file an error is: turning serde's errors and the key paths
//! of validation failures into `FILE:LINE: key `KEY``.

use super::ConfigError;

/// A validation failure, located by its key path.
#[derive(Debug)]
pub(super) struct Invalid {
    pub path: Vec<PathSeg>,
    pub why: String,
}

/// One step of a key path: a table key, or an index into an array of
/// tables (`app[0]`).
#[derive(Debug, Clone)]
pub(super) enum PathSeg {
    Key(String),
    Index(usize),
}

pub(super) fn seg(key: &str) -> PathSeg {
    PathSeg::Key(key.to_string())
}

/// The error for a file serde refused: serde names the key, and the parser
/// the byte offset.
pub(super) fn serde_error(
    text: &str,
    source: &str,
    err: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let key = err.path().to_string();
    let inner = err.into_inner();
    let line = inner.span().map(|s| line_of(text, s.start));
    ConfigError {
        source: source.to_string(),
        line,
        key: key_or_none(key),
        why: inner.message().trim().to_string(),
    }
}

/// The error for a file that parsed but failed validation.
pub(super) fn invalid_error(text: &str, source: &str, invalid: Invalid) -> ConfigError {
    ConfigError {
        source: source.to_string(),
        line: locate(text, &invalid.path),
        key: Some(render_path(&invalid.path)),
        why: invalid.why,
    }
}

fn render_path(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for part in path {
        match part {
            PathSeg::Key(k) if out.is_empty() => out.push_str(k),
            PathSeg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn key_or_none(key: String) -> Option<String> {
    if key.is_empty() || key == "." {
        None
    } else {
        Some(key)
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line of a key path in the document, for errors found after
/// parsing (cross references, ranges). Falls back to the nearest parent that
/// is written in the file, since a defaulted key has no line of its own.
fn locate(text: &str, path: &[PathSeg]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for part in path {
        let next = match part {
            PathSeg::Key(k) => {
                let table = item.as_table_like()?;
                if let Some(span) = item
                    .as_table()
                    .and_then(|t| t.key(k))
                    .and_then(|key| key.span())
                {
                    best = Some(span.start);
                }
                table.get(k)
            }
            PathSeg::Index(i) => {
                let entry = item.as_array_of_tables().and_then(|a| a.get(*i));
                if let Some(span) = entry.and_then(|t| t.span()) {
                    best = Some(span.start);
                }
                entry.map(|_| ()).and_then(|_| item.get(*i))
            }
        };
        match next {
            Some(n) => item = n,
            None => break,
        }
    }
    best.map(|offset| line_of(text, offset))
}
