//! Glob matching for stream names and referrers: `*` matches any run of
//! characters, `?` any one; everything else matches itself, case-sensitive
//! like the origins' stream names.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`: linear in
    // practice, never exponential.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `text` matches any of `patterns`.
pub fn any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| matches(p, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("pirated-*", "pirated-movie"));
        assert!(matches("pirated-*", "pirated-"));
        assert!(!matches("pirated-*", "Pirated-movie"), "case-sensitive");
        assert!(!matches("pirated-*", "xpirated-movie"));
        assert!(matches("*-cam?", "front-cam1"));
        assert!(!matches("*-cam?", "front-cam12"));
        assert!(matches(
            "https://www.example.com/*",
            "https://www.example.com/player.html"
        ));
        assert!(!matches(
            "https://www.example.com/*",
            "https://evil.example/www.example.com/"
        ));
        assert!(matches("*", ""));
        assert!(!matches("", "x"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let text = "a".repeat(10_000);
        assert!(!matches("*a*a*a*a*a*a*a*b", &text));
    }
}
