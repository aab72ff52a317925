//! The command line: check-config, --help, and the shipped config.

use std::process::Command;

fn guard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtmp-guard"))
}

#[test]
fn shipped_config_checks_ok() {
    let out = guard()
        .args(["check-config", "config/rtmp-guard.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_file_line_and_key_of_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:1935\"]\n\n[limits]\nmax_chunk_sise = 4096\n",
    )
    .unwrap();
    let out = guard().arg("check-config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5", path.display())), "{err}");
    assert!(err.contains("max_chunk_sise"), "{err}");
}

#[test]
fn running_with_a_broken_config_fails_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[app]]\nname = \"live\"\nupstream = \"nowhere\"\n").unwrap();
    let out = guard().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3: key `app[0].upstream`"), "{err}");
}

#[test]
fn help_explains_both_commands() {
    let out = guard().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("check-config"), "{text}");
}

/// A config with app `live` in token mode, and its secret, in `dir`.
fn token_config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("live.secret"), "0123456789abcdef0123\n").unwrap();
    let config = dir.join("guard.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\n\
         publish = \"token\"\ntoken_secret_file = \"live.secret\"\n",
    )
    .unwrap();
    config
}

#[test]
fn token_prints_a_url_the_guard_accepts_for_its_role_only() {
    use rtmp_guard::policy::token::{verify, TokenError};
    use rtmp_guard::verdict::Kind;
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path());
    let out = guard()
        .arg("token")
        .arg("--config")
        .arg(&config)
        .args([
            "--app",
            "live",
            "--stream",
            "cam1",
            "--role",
            "publish",
            "--ttl",
            "1h",
            "--ip",
            "192.0.2.7",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap();
    let query = url.trim().split_once('?').unwrap().1;
    assert!(
        url.starts_with("rtmp://127.0.0.1:1935/live/cam1?expires="),
        "{url}"
    );
    assert!(query.contains("&ip=192.0.2.7&role=publish&token="), "{url}");
    let params = rtmp_guard::policy::parse_query(query);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let client = "192.0.2.7".parse().unwrap();
    let secret = b"0123456789abcdef0123";
    assert_eq!(
        verify(secret, "live", "cam1", &params, Kind::Publish, client, now),
        Ok(())
    );
    assert_eq!(
        verify(secret, "live", "cam1", &params, Kind::Play, client, now),
        Err(TokenError::WrongRole)
    );
}

#[test]
fn token_requires_a_role_of_publish_or_play() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path());
    let base = ["--app", "live", "--stream", "cam1"];
    for extra in [&[][..], &["--role", "both"][..], &["--role", "admin"][..]] {
        let out = guard()
            .arg("token")
            .arg("--config")
            .arg(&config)
            .args(base)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} printed a URL");
        assert!(out.stdout.is_empty(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--role"), "{extra:?}: {err}");
    }
    let out = guard()
        .arg("token")
        .arg("--config")
        .arg(&config)
        .args(base)
        .args(["--role", "play"])
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && url.contains("&role=play&token="),
        "{url}"
    );
}

#[test]
fn key_prints_a_keys_file_line_the_guard_loads_as_stream_key() {
    let mint = || {
        let out = guard().args(["key", "--name", "cam7"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let (line, other) = (mint(), mint());
    assert_ne!(line, other, "two keys alike");
    let key = line
        .trim()
        .strip_prefix("cam7 = sk_")
        .expect("cam7 = sk_...");
    assert!(
        key.len() >= 43 && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{line}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("live.keys"),
        format!("{line}{other}")
            .replace("cam7 = ", "cam8 = ")
            .replacen("cam8", "cam7", 1),
    )
    .unwrap();
    let config = dir.path().join("guard.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1936\"]\n\
         [[app]]\nname = \"live\"\nupstream = \"o\"\n\
         publish = \"stream_key\"\nkeys_file = \"live.keys\"\n",
    )
    .unwrap();
    let out = guard().arg("check-config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    for bad in ["", "a b", "a?b", "a/b"] {
        let out = guard().args(["key", "--name", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(out.stdout.is_empty());
    }
}
