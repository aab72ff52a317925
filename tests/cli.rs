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

#[test]
fn token_prints_a_url_the_guard_accepts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("live.secret"), "0123456789abcdef0123\n").unwrap();
    let config = dir.path().join("guard.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\n\
         publish = \"token\"\ntoken_secret_file = \"live.secret\"\n",
    )
    .unwrap();
    let out = guard()
        .arg("token")
        .arg("--config")
        .arg(&config)
        .args([
            "--app",
            "live",
            "--stream",
            "cam1",
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
    let params = rtmp_guard::policy::parse_query(query);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        rtmp_guard::policy::token::verify(
            b"0123456789abcdef0123",
            "live",
            "cam1",
            &params,
            "192.0.2.7".parse().unwrap(),
            now
        ),
        Ok(())
    );
}
