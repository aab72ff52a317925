//! The deploy kits, checked rather than just shipped: the systemd unit with
//! systemd-analyze, the alert rules with promtool, the fail2ban filter with
//! fail2ban-regex against a real audit log, the Kubernetes manifests and
//! the Dockerfile against the guard's own config rules, and every metric
//! the alerts and the dashboard query against what the guard exports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::client::{connect_bytes, Closed, RawClient};
use common::config::GuardConfig;
use common::have_tools;
use common::origin::Harness;
use rtmp_guard::config::Config;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    if !have_tools("systemd_unit", &["systemd-analyze"]) {
        return;
    }
    let unit = read("systemd/rtmp-guard.service");
    for directive in [
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=rtmp-guard",
        "LogsDirectory=rtmp-guard",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    systemd_analyze_verify(&unit);
    // The commented alternative for kernel bans, in force instead.
    let kernel = [
        "#AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_NET_ADMIN",
        "#CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN",
        "#RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "#ExecStopPost=-/usr/sbin/nft delete table inet rtmp_guard",
    ];
    let mut with_kernel = String::new();
    for line in unit.lines() {
        let replaced = [
            "AmbientCapabilities=",
            "CapabilityBoundingSet=",
            "RestrictAddressFamilies=",
        ]
        .iter()
        .any(|k| line.starts_with(k));
        if replaced {
            continue;
        }
        let line = if kernel.contains(&line) {
            &line[1..]
        } else {
            line
        };
        with_kernel.push_str(line);
        with_kernel.push('\n');
    }
    for line in kernel {
        assert!(
            with_kernel.lines().any(|l| l == &line[1..]),
            "the unit lacks the commented {line}"
        );
    }
    systemd_analyze_verify(&with_kernel);
}

/// `systemd-analyze verify` passes `unit` without a word about it.
fn systemd_analyze_verify(unit: &str) {
    // verify checks that ExecStart exists: point it at the binary we built.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace(
        "/usr/local/bin/rtmp-guard",
        env!("CARGO_BIN_EXE_rtmp-guard"),
    );
    let path = dir.path().join("rtmp-guard.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    // Only lines about our unit matter; the host's own units may warn.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rtmp-guard.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn the_alert_rules_and_scrape_config_pass_promtool() {
    if !have_tools("promtool", &["promtool"]) {
        return;
    }
    let rules = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/rtmp-guard.rules.yml")));
    assert!(rules.contains("SUCCESS: 8 rules found"), "{rules}");
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml")));
    let rules = read("prometheus/rtmp-guard.rules.yml");
    for alert in [
        "RtmpGuardDown",
        "RtmpGuardBlockedSpike",
        "RtmpGuardBanStorm",
        "RtmpGuardUpstreamErrors",
        "RtmpGuardUpstreamServerDown",
        "RtmpGuardConfigReloadFailed",
        "RtmpGuardFleetRedisDown",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "no {alert}");
    }
}

/// `rtmp_guard_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("rtmp_guard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_in_the_alerts_and_the_dashboard_is_exported() {
    let h = Harness::new();
    // As a fleet guard exports them: with rtmp_guard_fleet_redis_up.
    h.guard.guard.metrics.enable_fleet();
    let exported = h.guard.guard.metrics.render();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/rtmp-guard.json")).expect("dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push_str(target["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for wanted in [
        "by reason",
        "by stage",
        "by app",
        "Throughput",
        "Handshake",
        "Upstream",
        "Bans",
        "reloads",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no dashboard panel for {wanted}: {titles:?}"
        );
    }
    let used = metric_names(&exprs)
        .into_iter()
        .chain(metric_names(&read("prometheus/rtmp-guard.rules.yml")));
    let mut checked = 0;
    for name in used {
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "{name} is queried but not exported"
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} metric names found");
}

#[test]
fn the_fail2ban_filter_matches_client_caused_refusals_in_a_real_audit_log() {
    if !have_tools("fail2ban_filter", &["fail2ban-regex"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let h = Harness::with_config(|origin| {
        GuardConfig::new()
            .audit(&audit)
            .origin(origin)
            .app("live", "")
    });
    // Three unknown apps from 127.0.0.9 (client-caused) ...
    for _ in 0..3 {
        let mut c = RawClient::handshaken_from(h.addr(), "127.0.0.9");
        c.send(&connect_bytes("nope"));
        assert!(matches!(
            c.wait_closed(Duration::from_secs(3)),
            Closed::Within(..)
        ));
    }
    // ... and a publish (refused: app live denies publishing) under a name
    // so long that the audit line carries it cut.
    let mut c = RawClient::handshaken_from(h.addr(), "127.0.0.9");
    c.open_stream("live", "publish", &"n".repeat(1000));
    assert!(matches!(
        c.wait_closed(Duration::from_secs(5)),
        Closed::Within(..)
    ));
    h.guard.guard.audit.flush();
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.contains(r#""stream":"nnnn"#) && text.contains("n…(cut)\"}"),
        "{text}"
    );
    let out = run(Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(&audit)
        .arg(deploy("fail2ban/filter.d/rtmp-guard.conf")));
    assert!(out.contains("4 matched"), "{out}");
    assert!(out.contains("127.0.0.9"), "{out}");
}

fn yaml_docs(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

#[test]
fn the_kubernetes_manifests_agree_with_the_config_they_ship() {
    let configmap = yaml_docs("kubernetes/configmap.yaml");
    let toml = configmap[0]["data"]["rtmp-guard.toml"]
        .as_str()
        .expect("the ConfigMap holds rtmp-guard.toml");
    // The config must load: give its secret files real paths (in the pod,
    // the Secrets the operator creates are mounted there).
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-token-of-sufficient-length").unwrap();
    let keys = dir.path().join("live.keys");
    std::fs::write(&keys, "cam1 = a-generated-key\n").unwrap();
    let toml = toml
        .replace("/etc/rtmp-guard-admin/token", &token.display().to_string())
        .replace(
            "/etc/rtmp-guard-keys/live.keys",
            &keys.display().to_string(),
        );
    let config = Config::parse(&toml, "configmap.yaml").expect("the shipped config is valid");
    let admin_port = config.admin.as_ref().expect("admin API on").listen.port();
    let metrics_port = config.metrics.listen.port();

    let deployment = &yaml_docs("kubernetes/deployment.yaml")[0];
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let port_of = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
    };
    assert_eq!(port_of("admin"), Some(admin_port as u64));
    assert_eq!(port_of("metrics"), Some(metrics_port as u64));
    assert_eq!(port_of("rtmp"), Some(1935));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        metrics_port.to_string().as_str()
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace > config.server.drain_timeout.as_secs(),
        "grace {grace}s must exceed the drain"
    );

    let services = yaml_docs("kubernetes/service.yaml");
    let rtmp = &services[0];
    assert_eq!(rtmp["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(rtmp["spec"]["ports"][0]["port"], 1935);
    assert!(read("kubernetes/service.yaml").contains("PROXY protocol"));
    let monitor = &yaml_docs("kubernetes/servicemonitor.yaml")[0];
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_reads_etc_rtmp_guard() {
    let docker = read("docker/Dockerfile");
    let stages = docker.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage: {stages} FROM lines");
    let user = docker
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(docker.contains("/etc/rtmp-guard/rtmp-guard.toml"));
    assert!(docker.contains("--locked"));
    // Everything it copies exists, so the build context is complete.
    for line in docker
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
            assert!(p.exists(), "COPY source {src} is missing");
        }
    }
}

/// Every YAML document of every manifest in deploy/kubernetes/.
fn kubernetes_docs() -> Vec<(String, serde_yaml::Value)> {
    let mut docs = Vec::new();
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for d in yaml_docs(&format!("kubernetes/{name}")) {
            docs.push((name.clone(), d));
        }
    }
    docs
}

#[test]
fn the_kubernetes_kit_ships_no_secret_value_and_waits_for_generated_ones() {
    let docs = kubernetes_docs();
    // No Secret with a value ships: no token or key anyone could reuse.
    for (file, d) in &docs {
        assert_ne!(d["kind"], "Secret", "{file} ships a Secret: {d:?}");
        for field in ["data", "stringData"] {
            assert!(
                d["kind"] == "ConfigMap" || d[field].is_null(),
                "{file} has {field}"
            );
        }
    }
    for file in ["configmap.yaml", "deployment.yaml", "service.yaml"] {
        let text = read(&format!("kubernetes/{file}")).to_ascii_lowercase();
        for placeholder in ["change-me", "changeme", "replace-me", "s3cret", "password"] {
            assert!(
                !text.contains(placeholder),
                "{file} holds a placeholder secret {placeholder:?}"
            );
        }
    }

    // The config reads every secret from a file, never inline.
    let configmap = &docs
        .iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .expect("a ConfigMap")
        .1;
    let toml_text = configmap["data"]["rtmp-guard.toml"].as_str().unwrap();
    let raw: toml::Value = toml::from_str(toml_text).expect("the ConfigMap's TOML");
    let mut secret_files = vec![raw["admin"]["token_file"]
        .as_str()
        .expect("the admin API reads its token from a file")
        .to_string()];
    for app in raw["app"].as_array().expect("apps") {
        assert!(app.get("keys").is_none(), "inline stream keys: {app:?}");
        for key in ["keys_file", "token_secret_file"] {
            if let Some(f) = app.get(key).and_then(|v| v.as_str()) {
                secret_files.push(f.to_string());
            }
        }
    }
    assert!(secret_files.len() >= 2, "{secret_files:?}");

    // Each of those files is in a volume of a Secret the kit does not
    // define and the pod cannot do without.
    let deployment = &docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .expect("a Deployment")
        .1;
    let pod = &deployment["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let guide = read("README.md");
    for file in &secret_files {
        let mount = mounts
            .iter()
            .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{file} is in no mounted volume"));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        let secret = &volume["secret"];
        let name = secret["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{file} is not read from a Secret: {volume:?}"));
        assert_ne!(secret["optional"], true, "{name} is optional");
        // The guide creates it, from a generated value.
        let create = guide
            .lines()
            .position(|l| l.contains(&format!("kubectl create secret generic {name}")))
            .unwrap_or_else(|| panic!("deploy/README.md never creates {name}"));
        let step: String = guide.lines().skip(create).take(2).collect();
        assert!(step.contains("$(openssl rand"), "{name}: {step}");
        let key = Path::new(file).file_name().unwrap().to_string_lossy();
        assert!(
            step.contains(&format!("--from-literal={key}=")),
            "{name}: {step}"
        );
    }
}
