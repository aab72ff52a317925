//! Secrets, and the files they are read from: an app's `keys_file` and
//! `token_secret_file`, and the admin API's `token_file`. Relative paths
//! are relative to the config file's directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

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

/// Shortest key a `stream_key` app accepts: the key is the whole secret.
pub const MIN_STREAM_KEY: usize = 16;

/// Checks the public names of `keys` (from `keys` or a `keys_file`):
/// plain stream names (see [`valid_public_name`]) within `max_len`
/// bytes. Public names are no secret: the error names them.
pub(super) fn check_public_names(
    keys: &BTreeMap<String, Secret>,
    max_len: usize,
) -> Result<(), String> {
    for name in keys.keys() {
        if !valid_public_name(name) {
            return Err(format!(
                "public name {name:?} is not a plain stream name \
                 (empty, or holds '?', '/', '=', '#' or a space)"
            ));
        }
        if name.len() > max_len {
            return Err(format!(
                "public name {name:?} is longer than max_name_length ({max_len})"
            ));
        }
    }
    Ok(())
}

/// The keys of a `stream_key` app, by an HMAC of the key: the stream name
/// a publisher sends is the secret, and the index gives the public name
/// it publishes as. A lookup hashes what was sent with a key drawn at
/// random when the process started, finds the entry by that digest (so
/// how long the search takes tells nothing of the stored keys), then
/// compares the key itself in constant time.
#[derive(Clone)]
pub struct KeyIndex {
    by_mac: HashMap<[u8; 32], (String, Secret)>,
    /// The public names, which are no secret: what a play, or a command
    /// naming a stream, may name in a `stream_key` app.
    public: BTreeSet<String>,
}

impl fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyIndex({} keys)", self.by_mac.len())
    }
}

/// The HMAC key of every [`KeyIndex`] in this process.
fn index_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn index_mac(key: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(index_key())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().into()
}

impl KeyIndex {
    /// Indexes `keys` (public name → key). A key must be usable as the
    /// stream name a publisher sends (no `?`, whitespace or control
    /// character), not be a public name of the same app, be at least
    /// [`MIN_STREAM_KEY`] bytes, and belong to one name only; the error
    /// says which rule a key broke, never the key.
    pub fn new(keys: &BTreeMap<String, Secret>) -> Result<KeyIndex, String> {
        let mut by_mac = HashMap::with_capacity(keys.len());
        for (name, key) in keys {
            let k = key.0.as_str();
            if k.is_empty()
                || k.chars()
                    .any(|c| c == '?' || c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "the key of {name:?} cannot be sent as a stream name \
                     (it is empty or holds '?', a space or a control character)"
                ));
            }
            if keys.contains_key(k) {
                return Err(format!("the key of {name:?} is also a public name"));
            }
            if k.len() < MIN_STREAM_KEY {
                return Err(format!(
                    "the key of {name:?} is shorter than {MIN_STREAM_KEY} bytes \
                     (`rtmp-guard key --name {name}` prints a strong one)"
                ));
            }
            if let Some((other, _)) = by_mac.insert(index_mac(k), (name.clone(), key.clone())) {
                return Err(format!("{other:?} and {name:?} have the same key"));
            }
        }
        Ok(KeyIndex {
            by_mac,
            public: keys.keys().cloned().collect(),
        })
    }

    /// Whether `name` is one of the public names (never a key: a key is
    /// no public name of its app). Plays are checked here, never against
    /// the keys, so a play tells nothing of them.
    pub fn is_public(&self, name: &str) -> bool {
        self.public.contains(name)
    }

    /// The public name whose key is `sent`, if any.
    pub fn public_name(&self, sent: &str) -> Option<&str> {
        let (name, key) = self.by_mac.get(&index_mac(sent))?;
        bool::from(key.0.as_bytes().ct_eq(sent.as_bytes())).then_some(name.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

/// Characters of a generated stream key, after its `sk_` prefix.
const KEY_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 43 base62 characters: 256 bits from the thread's CSPRNG.
const KEY_CHARS: usize = 43;

/// A new stream key, `sk_` and 43 random base62 characters (256 bits),
/// for `rtmp-guard key`.
pub fn generate_stream_key() -> String {
    let mut key = String::with_capacity(3 + KEY_CHARS);
    key.push_str("sk_");
    for _ in 0..KEY_CHARS {
        key.push(char::from(
            KEY_ALPHABET[rand::random_range(0..KEY_ALPHABET.len())],
        ));
    }
    key
}

/// Whether `name` can be a public name in a keys file (`rtmp-guard key`
/// checks it before printing a line).
pub fn valid_public_name(name: &str) -> bool {
    parse_keys_file(&format!("{name} = k")).is_ok_and(|k| k.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(n, k)| (n.to_string(), Secret(k.to_string())))
            .collect()
    }

    #[test]
    fn the_index_finds_a_public_name_by_its_key_only() {
        let index = KeyIndex::new(&keys(&[
            ("cam7", "sk_live_9f8e7d6c5b4a"),
            ("cam8", "sk_live_other_0000"),
        ]))
        .unwrap();
        assert_eq!(index.public_name("sk_live_9f8e7d6c5b4a"), Some("cam7"));
        assert_eq!(index.public_name("sk_live_other_0000"), Some("cam8"));
        assert!(index.is_public("cam7") && index.is_public("cam8"));
        assert!(!index.is_public("sk_live_9f8e7d6c5b4a"));
        for wrong in [
            "cam7",
            "sk_live_9f8e7d6c5b4",
            "sk_live_9f8e7d6c5b4a ",
            "",
            "SK_LIVE_OTHER_0000",
        ] {
            assert_eq!(index.public_name(wrong), None, "{wrong:?}");
        }
        assert!(!format!("{index:?}").contains("sk_live"));
    }

    #[test]
    fn keys_that_cannot_be_told_apart_are_refused_without_showing_them() {
        const K1: &str = "k1_0123456789abcdef";
        for (pairs, why) in [
            (&[("a", K1), ("b", K1)][..], "same key"),
            (
                &[("a", "b"), ("b", "k2_0123456789abcdef")][..],
                "also a public name",
            ),
            (&[("a", "k?x")][..], "cannot be sent"),
            (&[("a", "k\u{7}")][..], "cannot be sent"),
            (&[("a", "k_012345678901")][..], "shorter than 16 bytes"),
        ] {
            let e = KeyIndex::new(&keys(pairs)).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(
                !e.contains("k1_") && !e.contains("k?x") && !e.contains("k_0"),
                "{e}"
            );
        }
        assert!(KeyIndex::new(&keys(&[("a", "k_0123456789abcd")])).is_ok());
        let names = |n: &str| keys(&[(n, "k")]);
        assert!(check_public_names(&names("cam7"), 16).is_ok());
        for bad in ["a/b", "a?b", "a b", "", "a=b"] {
            assert!(check_public_names(&names(bad), 16).is_err(), "{bad:?}");
        }
        let e = check_public_names(&names("seventeen-chars!!"), 16).unwrap_err();
        assert!(e.contains("max_name_length"), "{e}");
    }

    #[test]
    fn generated_keys_are_long_distinct_and_plain() {
        let a = generate_stream_key();
        let b = generate_stream_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(a.starts_with("sk_"));
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        let line = parse_keys_file(&format!("cam7 = {a}")).unwrap();
        assert_eq!(line.get("cam7"), Some(&Secret(a)));
        assert!(valid_public_name("cam7"));
        for bad in ["", "a b", "a?b", "a/b", "a=b", "a#b"] {
            assert!(!valid_public_name(bad), "{bad:?}");
        }
    }
}
