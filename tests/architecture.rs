//! The shape of the source tree, checked: no import circles between the
//! files of `src/`, and the layers that must stay leaves import nothing
//! above them. A file's imports are every `crate::`, `super::` and `self::`
//! path in its code (tests and comments aside), resolved to the file that
//! defines the module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file and the module path it defines.
struct Source {
    file: String,
    module: Vec<String>,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "main.rs"))
        .map(|f| {
            let rel = f
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&f).unwrap();
            Source {
                file: rel,
                module,
                code: code_of(&text),
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without its unit tests and comments.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path the code names through `crate::`, `super::` or `self::`,
/// with `use` groups (`a::{b, c::d}`) expanded.
fn paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let boundary = i == 0
            || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        if boundary
            && (rest.starts_with("crate::")
                || rest.starts_with("super::")
                || rest.starts_with("self::"))
        {
            let (path, used) = read_path(&bytes[i..]);
            found.extend(expand(&path));
            i += used.max(1);
        } else {
            i += 1;
        }
    }
    found
}

/// Reads a path with nested `{...}` groups; returns it and its length.
fn read_path(chars: &[char]) -> (String, usize) {
    let mut depth = 0;
    let mut out = String::new();
    for (n, &c) in chars.iter().enumerate() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return (out, n),
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => return (out, n),
            _ => {}
        }
        if !c.is_whitespace() {
            out.push(c);
        }
    }
    (out, chars.len())
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim_end_matches("::").to_string()];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (n, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..n]);
                start = n + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .map(|p| p.trim_end_matches("::self").to_string())
        .collect()
}

/// The file that defines the longest module prefix of `path`, as seen
/// from `from`.
fn resolve(path: &str, from: &Source, by_module: &BTreeMap<Vec<String>, String>) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = match segments.first().copied() {
        Some("crate") => Vec::new(),
        Some("self") => from.module.clone(),
        Some("super") => {
            let mut m = from.module.clone();
            m.pop();
            while segments.get(1) == Some(&"super") {
                m.pop();
                segments.remove(0);
            }
            m
        }
        _ => return None,
    };
    segments.remove(0);
    let mut best = by_module.get(&base).cloned();
    for seg in segments {
        base.push(seg.to_string());
        match by_module.get(&base) {
            Some(file) => best = Some(file.clone()),
            None => break,
        }
    }
    best
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let by_module: BTreeMap<Vec<String>, String> = sources
        .iter()
        .map(|s| (s.module.clone(), s.file.clone()))
        .collect();
    sources
        .iter()
        .map(|s| {
            let deps = paths(&s.code)
                .iter()
                .filter_map(|p| resolve(p, s, &by_module))
                .filter(|f| *f != s.file)
                .collect();
            (s.file.clone(), deps)
        })
        .collect()
}

/// One circle of imports, if there is any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_reader_resolves_groups_and_relative_paths() {
    assert_eq!(
        expand("crate::{a, b::{c, d}}"),
        vec!["crate::a", "crate::b::c", "crate::b::d"]
    );
    assert_eq!(
        paths("use crate::x::Y; let z = super::w(1);"),
        vec!["crate::x::Y", "super::w"]
    );
    let g = graph();
    assert!(
        g["session.rs"].contains("relay/mod.rs"),
        "{:?}",
        g["session.rs"]
    );
    assert!(g["admit/admission.rs"].contains("admit/bans.rs"));
}

#[test]
fn no_file_in_src_imports_itself_through_a_circle() {
    let g = graph();
    if let Some(cycle) = find_cycle(&g) {
        panic!("import circle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_protocol_core_and_the_vocabulary_import_nothing_above_them() {
    for (file, deps) in graph() {
        if file.starts_with("rtmp/") {
            let outside: Vec<_> = deps.iter().filter(|d| !d.starts_with("rtmp/")).collect();
            assert!(outside.is_empty(), "{file} imports {outside:?}");
        }
        if file == "verdict.rs" || file == "connection.rs" {
            assert!(deps.is_empty(), "{file} imports {deps:?}");
        }
    }
}

#[test]
fn policy_decides_without_io() {
    for (file, deps) in graph() {
        if file.starts_with("policy/") {
            let io: Vec<_> = deps
                .iter()
                .filter(|d| {
                    [
                        "guard.rs",
                        "session.rs",
                        "relay.rs",
                        "report.rs",
                        "callback.rs",
                    ]
                    .contains(&d.as_str())
                })
                .collect();
            assert!(io.is_empty(), "{file} imports {io:?}");
            let code = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src")
                    .join(&file),
            )
            .unwrap();
            let code = code_of(&code);
            for clock in ["SystemTime::now", "Instant::now", "tokio::"] {
                assert!(!code.contains(clock), "{file} uses {clock}");
            }
        }
    }
}
