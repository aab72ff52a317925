//! Harnesses for the real programs the end-to-end tests run. Each binds to
//! free ports on 127.0.0.1 and is killed when dropped.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::config::GuardConfig;
use super::{free_port, http, http_get, wait_for};

pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// The node-media-server version `scripts/install-test-deps.sh` installs.
pub const NMS_VERSION: &str = "4.4.3";

/// Where `scripts/install-test-deps.sh` puts node-media-server, the
/// imageio-ffmpeg venv and the cached clips: `$RTMP_GUARD_INTEROP_DIR`, else
/// `target/interop`.
pub fn interop_dir() -> PathBuf {
    std::env::var_os("RTMP_GUARD_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop"))
}

/// Kills the child when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx with the RTMP module, as an origin.
pub struct Nginx {
    _proc: Proc,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx-rtmp with app `live` and `/stat`; `extra_app` is
    /// pasted into the rtmp server block. `live` starts each player at a
    /// key frame (`wait_key`, `wait_video`), so a player's frame count does
    /// not depend on where in the GOP it joined.
    pub fn start(extra_app: &str) -> Nginx {
        Nginx::start_with(extra_app, "")
    }

    /// As `start`, with `listen_options` on the RTMP listen line (for
    /// example " proxy_protocol").
    pub fn start_with(extra_app: &str, listen_options: &str) -> Nginx {
        Nginx::start_on(free_port(), extra_app, listen_options)
    }

    /// As `start_with`, with RTMP on `rtmp_port` (to start an origin again
    /// where it was).
    pub fn start_on(rtmp_port: u16, extra_app: &str, listen_options: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let http_port = free_port();
        let d = dir.path().display();
        fs::create_dir_all(dir.path().join("tmp")).expect("tmp dir");
        let conf = format!(
            "load_module {RTMP_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/error.log info;\npid {d}/nginx.pid;\nevents {{ worker_connections 1024; }}\n\
             rtmp {{\n  server {{\n    listen 127.0.0.1:{rtmp_port}{listen_options};\n    chunk_size 4096;\n\
             application live {{ live on; record off; wait_key on; wait_video on; }}\n    {extra_app}\n  }}\n}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             server {{\n    listen 127.0.0.1:{http_port};\n    location /stat {{ rtmp_stat all; }}\n  }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(super::which("nginx").unwrap_or_else(|| "nginx".into()))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let pid = u64::from(child.id());
        let nginx = Nginx {
            _proc: Proc {
                child,
                name: "nginx",
            },
            rtmp: SocketAddr::from(([127, 0, 0, 1], rtmp_port)),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            _dir: dir,
        };
        // Poll the HTTP side only: touching the RTMP port would count as
        // an accepted connection. The pid check makes sure the answer came
        // from this nginx, which has bound both of its ports.
        wait_for(Duration::from_secs(10), || {
            let stat = http_get(nginx.http, "/stat")?;
            (xml_value(&stat, "pid") == Some(pid)).then_some(())
        })
        .unwrap_or_else(|| panic!("nginx did not start: {}", nginx.error_log()));
        nginx
    }

    pub fn stat(&self) -> String {
        http_get(self.http, "/stat").unwrap_or_default()
    }

    /// RTMP connections nginx has accepted since it started.
    pub fn naccepted(&self) -> u64 {
        let stat = self.stat();
        xml_value(&stat, "naccepted").unwrap_or_else(|| panic!("no naccepted in /stat: {stat}"))
    }

    /// Whether `/stat` lists a stream of this name that has a publisher.
    pub fn publishing(&self, name: &str) -> bool {
        let stat = self.stat();
        stat.split("<stream>")
            .skip(1)
            .any(|s| s.contains(&format!("<name>{name}</name>")) && s.contains("<publishing/>"))
    }

    /// Waits up to 10 s for `/stat` to show `name` published.
    pub fn wait_publishing(&self, name: &str) -> bool {
        wait_for(Duration::from_secs(10), || {
            self.publishing(name).then_some(())
        })
        .is_some()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }
}

pub fn xml_value(xml: &str, tag: &str) -> Option<u64> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find('<')? + start;
    xml[start..end].trim().parse().ok()
}

/// node and node-media-server's `bin/app.js`, as installed under
/// [`interop_dir`].
#[derive(Debug, Clone)]
pub struct NmsInstall {
    pub node: PathBuf,
    pub app: PathBuf,
}

impl NmsInstall {
    /// node on the PATH and node-media-server [`NMS_VERSION`]; otherwise
    /// what is missing.
    pub fn locate() -> Result<NmsInstall, String> {
        let mut missing = Vec::new();
        let node = super::which("node");
        if node.is_none() {
            missing.push("node".to_string());
        }
        let dir = interop_dir().join("nms/node_modules/node-media-server");
        let app = dir.join("bin/app.js");
        let version = fs::read_to_string(dir.join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|p| p["version"].as_str().map(str::to_string));
        if version.as_deref() != Some(NMS_VERSION) || !app.is_file() {
            missing.push(format!(
                "node-media-server {NMS_VERSION} in {} (found {version:?})",
                dir.display()
            ));
        }
        match node {
            Some(node) if missing.is_empty() => Ok(NmsInstall { node, app }),
            _ => Err(missing.join("; ")),
        }
    }
}

/// node-media-server, on a temporary copy of its shipped config.json, logged
/// in to its HTTP API.
pub struct Nms {
    _proc: Proc,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    /// The API's JWT.
    pub token: String,
    dir: tempfile::TempDir,
}

impl Nms {
    pub fn start(install: &NmsInstall) -> Nms {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().expect("temp dir");
        let shipped = install.app.with_file_name("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&shipped).expect("NMS config.json"))
                .expect("NMS config.json is JSON");
        // Left empty, both would be generated and written back; the
        // password is hashed and written back in any case.
        let seed = format!("{:?}{}", std::time::Instant::now(), std::process::id());
        let secret = hex::encode(Sha256::digest(format!("jwt{seed}")));
        let password = hex::encode(&Sha256::digest(format!("pw{seed}"))[..12]);
        config["auth"]["jwt"]["secret"] = secret.into();
        config["auth"]["jwt"]["users"][0]["password"] = password.clone().into();
        let user = config["auth"]["jwt"]["users"][0]["username"]
            .as_str()
            .unwrap_or("admin")
            .to_string();
        // RTMPS and HTTPS would listen on fixed ports; the tests need
        // neither.
        if let Some(o) = config.as_object_mut() {
            o.remove("rtmps");
            o.remove("https");
        }
        let config_path = dir.path().join("config.json");
        fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap())
            .expect("write NMS config");
        let rtmp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = fs::File::create(dir.path().join("nms.log")).expect("NMS log");
        let child = Command::new(&install.node)
            .arg(&install.app)
            .arg("-c")
            .arg(&config_path)
            .args(["-b", "127.0.0.1", "--rtmp-port"])
            .arg(rtmp.port().to_string())
            .arg("--http-port")
            .arg(http_addr.port().to_string())
            .arg("--no-admin")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn node-media-server");
        let mut nms = Nms {
            _proc: Proc {
                child,
                name: "node-media-server",
            },
            rtmp,
            http: http_addr,
            token: String::new(),
            dir,
        };
        wait_for(Duration::from_secs(20), || {
            let (status, body) = http(nms.http, "GET", "/api/v1/health", None, "");
            (status == 200 && body.contains(NMS_VERSION) && listening(nms.rtmp)).then_some(())
        })
        .unwrap_or_else(|| panic!("node-media-server did not start:\n{}", nms.log()));
        let login = format!("{{\"username\":\"{user}\",\"password\":\"{password}\"}}");
        let (status, body) = http(nms.http, "POST", "/api/v1/login", None, &login);
        let token = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["token"].as_str().map(str::to_string));
        nms.token = token.unwrap_or_else(|| {
            panic!(
                "node-media-server login failed ({status}): {body}\n{}",
                nms.log()
            )
        });
        nms
    }

    /// The `data` of a GET on the API (`/api/v1/...`), or None.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http(self.http, "GET", path, Some(&self.token), "");
        if status != 200 {
            return None;
        }
        let mut v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(v["data"].take())
    }

    /// The stream list (`/api/v1/streams`): one object per stream path,
    /// with `key` (`/app/name`), `status` (`publishing`, `reconnecting`
    /// for 30 s after its publisher left, `idle`), `subscribers` and
    /// `publisher.inBytes`.
    pub fn streams(&self) -> Option<Vec<serde_json::Value>> {
        match self.api("/api/v1/streams")?["streams"].take() {
            serde_json::Value::Array(streams) => Some(streams),
            _ => None,
        }
    }

    /// Bytes node-media-server has read from all its RTMP connections.
    pub fn bytes_in(&self) -> Option<u64> {
        self.api("/api/v1/stats")?["network"]["inBytes"].as_u64()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nms.log")).unwrap_or_default()
    }
}

/// HAProxy in TCP mode in front of `backend`, sending PROXY v2.
pub struct Haproxy {
    _proc: Proc,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(backend: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = format!(
            "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 3s\n\
             timeout client 60s\n    timeout server 60s\nfrontend rtmp\n    bind {addr}\n\
             default_backend guard\nbackend guard\n    server guard {backend} send-proxy-v2\n"
        );
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, conf).expect("write haproxy.cfg");
        let child = Command::new(super::which("haproxy").unwrap_or_else(|| "haproxy".into()))
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy {
            _proc: Proc {
                child,
                name: "haproxy",
            },
            addr,
            _dir: dir,
        };
        // Connecting to its frontend would reach the guard; wait for the
        // listening socket instead.
        wait_for(Duration::from_secs(10), || listening(addr).then_some(()))
            .expect("haproxy did not start");
        h
    }
}

/// Whether something listens on `addr` (from /proc/net/tcp; no connect).
pub fn listening(addr: SocketAddr) -> bool {
    let port = format!(":{:04X}", addr.port());
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1).is_some_and(|a| a.ends_with(&port)) && f.get(3) == Some(&"0A")
            })
        })
        .unwrap_or(false)
}

/// The guard binary, run on a config file.
pub struct GuardProc {
    _proc: Proc,
    pub rtmp: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GuardProc {
    pub fn pid(&self) -> u32 {
        self._proc.child.id()
    }

    /// Runs on `config`, listening for RTMP and metrics on free ports.
    pub fn start(config: GuardConfig) -> GuardProc {
        GuardProc::start_with_env(config, &[])
    }

    /// As [`GuardProc::start`], with `env` added to the guard's environment.
    pub fn start_with_env(config: GuardConfig, env: &[(&str, &str)]) -> GuardProc {
        let dir = tempfile::tempdir().expect("temp dir");
        let rtmp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = config.listen(rtmp).metrics(metrics).build();
        let path = dir.path().join("rtmp-guard.toml");
        fs::write(&path, config).expect("write config");
        let log = dir.path().join("guard.log");
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rtmp-guard"))
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RTMP_GUARD_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .arg("--config")
            .arg(&path)
            .arg("--log-format")
            .arg(std::env::var("RTMP_GUARD_BENCH_LOG_FORMAT").unwrap_or_else(|_| "json".into()))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn rtmp-guard");
        let guard = GuardProc {
            _proc: Proc {
                child,
                name: "rtmp-guard",
            },
            rtmp,
            metrics,
            log,
            _dir: dir,
        };
        wait_for(Duration::from_secs(10), || guard.metrics_text())
            .unwrap_or_else(|| panic!("guard did not start: {}", guard.log_text()));
        guard
    }

    /// Sends a signal (`HUP`, `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name} failed");
    }

    /// Waits up to `within` for the guard to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        wait_for(within, || self._proc.child.try_wait().ok().flatten())
    }

    /// The config file the guard runs on.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("rtmp-guard.toml")
    }

    pub fn metrics_text(&self) -> Option<String> {
        http_get(self.metrics, "/metrics")
    }

    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics_text().unwrap_or_default();
        super::metric(&text, sample).unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// ffmpeg publishing a synthetic H.264/AAC stream in real time.
pub fn ffmpeg_publish(url: &str, seconds: u32, log: &Path) -> Proc {
    ffmpeg_publish_with(url, &[], seconds, log)
}

/// As [`ffmpeg_publish`], with `output_options` before the URL (for
/// example `-rtmp_playpath NAME`, for a stream name a URL cannot carry).
pub fn ffmpeg_publish_with(url: &str, output_options: &[&str], seconds: u32, log: &Path) -> Proc {
    let out = fs::File::create(log).expect("ffmpeg log");
    let child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            "-stats",
            "-re",
        ])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "25",
        ])
        .args(["-c:a", "aac", "-f", "flv"])
        .args(output_options)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn ffmpeg publisher");
    Proc {
        child,
        name: "ffmpeg-publish",
    }
}

/// The last `speed=` ffmpeg reported in its log (1.0 is real time).
pub fn final_speed(log: &Path) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let tail = text.rsplit("speed=").next()?;
    tail.trim_start().split('x').next()?.trim().parse().ok()
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// rtmpdump saving `url`'s live stream to `flv` for up to 6 s, on a
/// thread, so a second player can run beside it.
pub fn rtmpdump_background(
    url: &str,
    flv: &Path,
) -> std::thread::JoinHandle<std::io::Result<std::process::ExitStatus>> {
    let (url, flv) = (url.to_string(), flv.to_path_buf());
    std::thread::spawn(move || {
        Command::new("timeout")
            .args(["6", "rtmpdump", "--live", "-q", "-r", &url, "-o"])
            .arg(&flv)
            .status()
    })
}

/// A process's CPU time (utime + stime), in seconds, at the kernel's
/// USER_HZ of 100.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The arguments of an ffmpeg player decoding `url`'s video for up to
/// `seconds` and discarding it.
fn player_args(url: &str, seconds: u32) -> Vec<String> {
    let seconds = seconds.to_string();
    [
        "-hide_banner",
        "-nostdin",
        "-rw_timeout",
        "5000000",
        "-i",
        url,
        "-t",
        &seconds,
        "-map",
        "0:v",
        "-f",
        "null",
        "-",
    ]
    .map(str::to_string)
    .to_vec()
}

/// ffmpeg playing `url` for up to `seconds`; returns frames decoded and
/// its output.
pub fn ffmpeg_play(url: &str, seconds: u32) -> (u64, Output) {
    let out = Command::new("timeout")
        .arg((seconds + 15).to_string())
        .arg("ffmpeg")
        .args(player_args(url, seconds))
        .output()
        .expect("run ffmpeg player");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (last_frame_count(&stderr), out)
}

/// As [`ffmpeg_play`], in the background, its output in `log`.
pub fn ffmpeg_play_background(url: &str, seconds: u32, log: &Path) -> Proc {
    let out = fs::File::create(log).expect("ffmpeg log");
    let child = Command::new("ffmpeg")
        .args(player_args(url, seconds))
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn ffmpeg player");
    Proc {
        child,
        name: "ffmpeg-play",
    }
}

fn last_frame_count(stderr: &str) -> u64 {
    stderr
        .rsplit("frame=")
        .next()
        .filter(|_| stderr.contains("frame="))
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits for a child to exit, killing it after `within`.
pub fn wait_exit(p: &mut Proc, within: Duration) -> Option<std::process::ExitStatus> {
    wait_for(within, || p.child.try_wait().ok().flatten())
}
