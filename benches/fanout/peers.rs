//! The peers a run starts, each on free ports of 127.0.0.1 and killed when
//! dropped: nginx-rtmp, HAProxy `mode tcp`, the release guard (with an
//! RTMPS listener on its own certificate for `guard-tls`); and what the
//! bench reads from them.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::client::Target;
use crate::common;
use crate::common::config::GuardConfig;
use crate::common::procs::{listening, GuardProc, Proc};
use crate::common::tls::{client_config, tls_table, TestCert};
use crate::{PathKind, APP, FD_RESERVE, STREAM};
use rtmp_guard::config::Config;

pub const UPSTREAM_TO_CLIENT: &str = "rtmp_guard_bytes_total{direction=\"upstream_to_client\"}";
pub const SESSIONS_ACTIVE: &str = "rtmp_guard_sessions_active{app=\"live\"}";
const BLOCKED: &str = "rtmp_guard_blocked_sessions_total{";
pub const TLS_HANDSHAKES: &str = "rtmp_guard_tls_handshakes_total{result=\"success\"}";
/// A name the bench's certificate is issued for ([`TestCert`]: `localhost`
/// and `127.0.0.1`); the viewers check the guard's certificate against it.
const TLS_NAME: &str = "localhost";

/// nginx-rtmp sized for `viewers` players, with `/stat`.
pub struct Origin {
    _proc: Proc,
    pub rtmp: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl Origin {
    pub fn start(viewers: usize) -> Origin {
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        let rtmp = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("tmp")).expect("nginx tmp dir");
        let connections = viewers + 100;
        // With master_process off, worker_rlimit_nofile is not applied:
        // nginx runs on the limit it inherits from this process.
        let conf = format!(
            "load_module {module};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             worker_rlimit_nofile {nofile};\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections {connections}; }}\n\
             rtmp {{\n  server {{\n    listen {rtmp};\n    chunk_size 4096;\n\
             application {APP} {{ live on; record off; }}\n  }}\n}}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             server {{\n    listen {http};\n    location /stat {{ rtmp_stat all; }}\n  }}\n}}\n",
            module = common::procs::RTMP_MODULE,
            nofile = connections + 100,
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new(common::which("nginx").unwrap_or_else(|| "nginx".into()))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (scripts/install-test-deps.sh installs it)");
        let pid = u64::from(child.id());
        let origin = Origin {
            _proc: Proc {
                child,
                name: "nginx",
            },
            rtmp,
            http,
            dir,
        };
        common::wait_for(Duration::from_secs(10), || {
            let stat = origin.stat()?;
            (common::procs::xml_value(&stat, "pid") == Some(pid)).then_some(())
        })
        .unwrap_or_else(|| panic!("nginx did not start: {}", origin.error_log()));
        origin
    }

    fn stat(&self) -> Option<String> {
        common::http_get(self.http, "/stat")
    }

    /// Messages nginx dropped, summed over the clients `/stat` lists now.
    pub fn dropped(&self) -> u64 {
        self.stat()
            .map(|xml| sum_tags(&xml, "dropped"))
            .unwrap_or(0)
    }

    pub fn publishing(&self) -> bool {
        self.stat().is_some_and(|s| {
            s.split("<stream>").skip(1).any(|s| {
                s.contains(&format!("<name>{STREAM}</name>")) && s.contains("<publishing/>")
            })
        })
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The sum of every `<tag>N</tag>` in `xml`.
fn sum_tags(xml: &str, tag: &str) -> u64 {
    let open = format!("<{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split('<').next()?.trim().parse::<u64>().ok())
        .sum()
}

/// HAProxy `mode tcp` in front of nginx, sized for `viewers`.
pub struct Haproxy {
    proc: Proc,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// `maxconn` is `viewers` + 100, or less if that does not fit in
    /// `fds`: HAProxy refuses to start when 2 × maxconn + its own sockets
    /// exceed the fd limit it can get.
    fn start(origin: SocketAddr, viewers: usize, fds: u64) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir for haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let fit = (fds.saturating_sub(FD_RESERVE) / 2) as usize;
        let maxconn = (viewers + 100).min(fit);
        if maxconn < viewers + 100 {
            println!(
                "  note: HAProxy maxconn {maxconn} (not {}): 2 × maxconn must fit in RLIMIT_NOFILE {fds}",
                viewers + 100
            );
        }
        let conf = format!(
            "global\n    maxconn {maxconn}\ndefaults\n    mode tcp\n    timeout connect 5s\n\
             timeout client 10m\n    timeout server 10m\nfrontend rtmp\n    bind {addr}\n\
             maxconn {maxconn}\n    default_backend origin\nbackend origin\n    server nginx {origin}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).expect("write haproxy.cfg");
        let child = Command::new(common::which("haproxy").unwrap_or_else(|| "haproxy".into()))
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log"))
            .spawn()
            .expect("spawn haproxy (scripts/install-test-deps.sh haproxy installs it)");
        let h = Haproxy {
            proc: Proc {
                child,
                name: "haproxy",
            },
            addr,
            dir,
        };
        common::wait_for(Duration::from_secs(10), || listening(addr).then_some(())).unwrap_or_else(
            || {
                let log = std::fs::read_to_string(h.dir.path().join("haproxy.log"));
                panic!(
                    "haproxy did not start listening: {}",
                    log.unwrap_or_default()
                )
            },
        );
        h
    }
}

/// The guard's config for `viewers` players from one address: per-address
/// limits lifted, capacity raised, nothing else changed.
fn guard_config(origin: SocketAddr, viewers: usize) -> GuardConfig {
    let shipped = Config::embedded_default().expect("the shipped config parses");
    let shipped_viewers = shipped.app(APP).map_or(0, |a| a.max_viewers as usize);
    let room = viewers + 100;
    let per_ip = format!(
        "[limits.per_ip]\nconnections_per_second = {fast}\nburst = {fast}\nmax_concurrent = {c}\n\
         [limits.global]\nmax_pending = {p}\n",
        fast = 1_000_000,
        c = room.max(shipped.limits.per_ip.max_concurrent as usize),
        p = room.max(shipped.limits.global.max_pending),
    );
    GuardConfig::new()
        .server(&format!(
            "max_connections = {}",
            room.max(shipped.server.max_connections)
        ))
        .tables(&per_ip)
        .origin(origin)
        // nginx answers handshakes late while thousands of players ramp up;
        // the viewers' own handshake timeout (5 s) is the bound that counts.
        .origin_connect_timeout("10s")
        .app(APP, &format!("max_viewers = {}", room.max(shipped_viewers)))
}

/// Fails unless the guard would admit `viewers` players from one address
/// (over RTMPS too if `tls`).
fn check_guard_config(config: &GuardConfig, viewers: usize, tls: bool) -> Result<(), String> {
    let parsed = Config::parse(&config.build(), "fanout bench config")
        .map_err(|e| format!("the bench's guard config does not parse: {e}"))?;
    if tls && parsed.tls.is_none() {
        return Err("the bench's guard config has no [tls]".into());
    }
    let per_ip = &parsed.limits.per_ip;
    let app = parsed.app(APP).ok_or("no app in the bench config")?;
    let short = [
        ("server.max_connections", parsed.server.max_connections),
        (
            "limits.per_ip.max_concurrent",
            per_ip.max_concurrent as usize,
        ),
        ("limits.per_ip.burst", per_ip.burst as usize),
        (
            "limits.global.max_pending",
            parsed.limits.global.max_pending,
        ),
        ("app.max_viewers", app.max_viewers as usize),
    ]
    .into_iter()
    .filter(|(_, v)| *v < viewers)
    .map(|(k, v)| format!("{k} = {v}"))
    .collect::<Vec<_>>();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "guard config below {viewers} viewers: {}",
            short.join(", ")
        ))
    }
}

/// The guard's RTMPS side in a `guard-tls` run: where it listens, and how
/// the viewers reach it.
pub struct GuardTls {
    addr: SocketAddr,
    connector: TlsConnector,
    /// The certificate and key the guard was configured with.
    _dir: tempfile::TempDir,
}

impl GuardTls {
    /// A fresh self-signed certificate in its own directory, and the
    /// `[tls]` table serving it on a free port (handshake_timeout left at
    /// its default).
    fn new() -> (GuardTls, String) {
        let dir = tempfile::tempdir().expect("temp dir for the certificate");
        let cert = TestCert::new();
        let (cert_file, key_file) = cert.write(dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
        let table = tls_table(addr, &cert_file, &key_file);
        let tls = GuardTls {
            addr,
            connector: TlsConnector::from(client_config(Some(&cert))),
            _dir: dir,
        };
        (tls, table)
    }
}

/// A path under test, its proxy running: one process, or several with the
/// viewers spread over them (`--procs`).
pub enum Peer {
    Direct,
    Haproxy(Vec<Haproxy>),
    /// The guard; with `tls`, its viewers come in over RTMPS.
    Guard {
        procs: Vec<GuardProc>,
        tls: Option<GuardTls>,
    },
}

impl Peer {
    /// `procs` processes of the proxy, each sized for its share of
    /// `viewers`.
    pub fn start(
        path: PathKind,
        origin: &Origin,
        viewers: usize,
        fds: u64,
        procs: usize,
    ) -> Result<Peer, String> {
        let n = procs.max(1);
        let share = viewers.div_ceil(n);
        Ok(match path {
            PathKind::Direct => Peer::Direct,
            PathKind::Haproxy => Peer::Haproxy(
                (0..n)
                    .map(|_| Haproxy::start(origin.rtmp, share, fds))
                    .collect(),
            ),
            PathKind::Guard | PathKind::GuardTls => {
                let config = guard_config(origin.rtmp, share);
                let (config, tls) = if path == PathKind::GuardTls {
                    let (tls, table) = GuardTls::new();
                    (config.tables(&table), Some(tls))
                } else {
                    (config, None)
                };
                check_guard_config(&config, share, tls.is_some())?;
                Peer::Guard {
                    procs: (0..n).map(|_| GuardProc::start(config.clone())).collect(),
                    tls,
                }
            }
        })
    }

    /// Where the viewers connect, and how: one target per process, the
    /// viewers taking them in turn.
    pub fn targets(&self, origin: &Origin) -> Vec<Target> {
        let plain = |addr| Target { addr, tls: None };
        match self {
            Peer::Direct => vec![plain(origin.rtmp)],
            Peer::Haproxy(hs) => hs.iter().map(|h| plain(h.addr)).collect(),
            Peer::Guard { procs, tls: None } => procs.iter().map(|g| plain(g.rtmp)).collect(),
            Peer::Guard { tls: Some(t), .. } => vec![Target {
                addr: t.addr,
                tls: Some((
                    t.connector.clone(),
                    ServerName::try_from(TLS_NAME).expect("a DNS name"),
                )),
            }],
        }
    }

    /// The proxy's processes; none for the direct path.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Peer::Direct => Vec::new(),
            Peer::Haproxy(hs) => hs.iter().map(|h| h.proc.child.id()).collect(),
            Peer::Guard { procs, .. } => procs.iter().map(GuardProc::pid).collect(),
        }
    }

    /// The guard's processes; none on the other paths.
    pub fn guards(&self) -> &[GuardProc] {
        match self {
            Peer::Guard { procs, .. } => procs,
            _ => &[],
        }
    }

    /// A figure from each guard process's metrics, summed; None off the
    /// guard. A process whose metrics cannot be read fails the run rather
    /// than counting as 0.
    fn over_guards<T: std::iter::Sum>(
        &self,
        each: impl Fn(&str) -> T,
    ) -> Result<Option<T>, String> {
        let guards = self.guards();
        if guards.is_empty() {
            return Ok(None);
        }
        let texts = guards
            .iter()
            .map(|g| {
                g.metrics_text()
                    .ok_or("the guard's /metrics did not answer")
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(texts.iter().map(|t| each(t)).sum()))
    }

    /// A guard counter summed over its processes (0 where a process has
    /// no such sample yet); None off the guard.
    pub fn guard_sum(&self, sample: &str) -> Result<Option<u64>, String> {
        self.over_guards(|text| common::metric(text, sample).unwrap_or(0.0) as u64)
    }

    /// The guard's successful TLS handshakes so far, on an RTMPS run.
    pub fn tls_handshakes(&self) -> Result<Option<u64>, String> {
        match self {
            Peer::Guard { tls: Some(_), .. } => self.guard_sum(TLS_HANDSHAKES),
            _ => Ok(None),
        }
    }

    /// Connections the guard refused so far, all stages and reasons, over
    /// its processes; None off the guard.
    pub fn guard_blocked(&self) -> Result<Option<f64>, String> {
        self.over_guards(|text| metric_sum(text, BLOCKED))
    }

    /// Nonzero refusal counters, for a failure report; empty off the
    /// guard.
    pub fn guard_refusals(&self) -> String {
        let guards = self.guards();
        if guards.is_empty() {
            return String::new();
        }
        let lines: Vec<String> = guards
            .iter()
            .flat_map(|g| {
                let text = g.metrics_text().unwrap_or_default();
                text.lines()
                    .filter(|l| l.starts_with(BLOCKED) && !l.ends_with(" 0"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if lines.is_empty() {
            "the guard counted no refusal".into()
        } else {
            format!("the guard refused: {}", lines.join("; "))
        }
    }
}

/// Sum of every sample whose name starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}
