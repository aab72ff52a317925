//! An in-process RTMP origin that records what the guard sends it, and a
//! harness running the guard in-process in front of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rtmp_guard::config::Config;
use rtmp_guard::proxy_protocol::{self, Header};
use rtmp_guard::rtmp::amf0::{self, Amf0Value};
use rtmp_guard::rtmp::chunk::writer::ChunkWriter;
use rtmp_guard::rtmp::chunk::MessageHeader;
use rtmp_guard::rtmp::handshake::ServerHandshake;
use rtmp_guard::verdict::{Reason, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::GuardConfig;
use super::hostile;

/// Window Acknowledgement Size, as an origin sends after the handshake.
pub const ORIGIN_HELLO: [u8; 16] = [0x02, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0, 0x26, 0x25, 0xa0];

/// An origin's commands on message stream 0, chunked as an origin that
/// never changed its chunk size (128) writes them.
pub fn origin_commands(commands: &[Vec<Amf0Value>]) -> Vec<u8> {
    let mut writer = ChunkWriter::new();
    let mut out = Vec::new();
    for values in commands {
        let payload = amf0::encode(values).expect("encodable");
        writer.write(
            &mut out,
            &MessageHeader::for_payload(3, 20, 0, &payload),
            &payload,
        );
    }
    out
}

/// The values of the `_result` with which an origin accepts a `connect`.
pub fn connect_success() -> Vec<Amf0Value> {
    let s = |v: &str| Amf0Value::String(v.into());
    vec![
        s("_result"),
        Amf0Value::Number(1.0),
        Amf0Value::Object(vec![
            ("fmsVer".into(), s("FMS/3,0,1,123")),
            ("capabilities".into(), Amf0Value::Number(31.0)),
        ]),
        Amf0Value::Object(vec![
            ("level".into(), s("status")),
            ("code".into(), s("NetConnection.Connect.Success")),
            ("description".into(), s("Connection succeeded.")),
        ]),
    ]
}

/// The properties of an Enhanced RTMP reconnect request's info object
/// that sends the client to `tc_url`.
pub fn reconnect_info(tc_url: &str) -> Vec<(String, Amf0Value)> {
    let s = |v: &str| Amf0Value::String(v.into());
    vec![
        ("level".into(), s("status")),
        ("code".into(), s("NetConnection.Connect.ReconnectRequest")),
        (
            "description".into(),
            s("The streaming server is going away."),
        ),
        ("tcUrl".into(), s(tc_url)),
    ]
}

/// An `onStatus` carrying `info`, as an origin sends it on stream 0.
pub fn on_status(info: Amf0Value) -> Vec<Amf0Value> {
    vec![
        Amf0Value::String("onStatus".into()),
        Amf0Value::Number(0.0),
        Amf0Value::Null,
        info,
    ]
}

/// An RTMP origin that handshakes and records what it is sent.
pub struct TestOrigin {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// PROXY headers the guard sent, in order.
    pub proxy_headers: Arc<Mutex<Vec<Header>>>,
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        TestOrigin::replying(Vec::new()).await
    }

    /// As [`TestOrigin::start`], and on each connection, once the origin
    /// has read a `connect`, it sends `after_connect` (chunks as an origin
    /// writes them: [`origin_commands`]).
    pub async fn replying(after_connect: Vec<u8>) -> TestOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let proxy_headers = Arc::new(Mutex::new(Vec::new()));
        let (a, r, h) = (accepted.clone(), received.clone(), proxy_headers.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let slot = {
                    let mut all = r.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let r = r.clone();
                let h = h.clone();
                let mut reply = Some(after_connect.clone()).filter(|b| !b.is_empty());
                tokio::spawn(async move {
                    let mut hs = ServerHandshake::new();
                    let mut buf = vec![0u8; 65536];
                    let mut done = false;
                    let mut first = true;
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut input = &buf[..n];
                        if std::mem::take(&mut first) && proxy_protocol::looks_like_header(input) {
                            // The guard sends its header and C0+C1 in one write.
                            let Ok(Some((header, used))) = proxy_protocol::parse(input) else {
                                break;
                            };
                            h.lock().unwrap().push(header);
                            input = &input[used..];
                        }
                        let mut hello = false;
                        if !done {
                            let Ok(step) = hs.feed(input) else { break };
                            if s.write_all(&step.response).await.is_err() {
                                break;
                            }
                            input = &input[step.consumed..];
                            done = step.done;
                            if !done {
                                continue;
                            }
                            hello = true;
                        }
                        let connected = {
                            let mut all = r.lock().unwrap();
                            all[slot].extend_from_slice(input);
                            reply.is_some()
                                && super::client::command_names(&all[slot])
                                    .iter()
                                    .any(|c| c == "connect")
                        };
                        if hello {
                            // An origin says hello first, like nginx does.
                            let _ = s.write_all(&ORIGIN_HELLO).await;
                        }
                        if connected {
                            let bytes = reply.take().unwrap_or_default();
                            if s.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
        });
        TestOrigin {
            addr,
            accepted,
            received,
            proxy_headers,
        }
    }

    /// Waits up to `within` for the origin to have accepted `n`
    /// connections; true if it did.
    pub fn reaches(&self, n: usize, within: std::time::Duration) -> bool {
        super::wait_for(within, || (self.accepted() == n).then_some(())).is_some()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

pub struct Harness {
    pub _rt: tokio::runtime::Runtime,
    pub origin: TestOrigin,
    pub guard: rtmp_guard::Running,
}

impl Harness {
    /// The hostile-set limits and app `live`, in front of a test origin.
    pub fn new() -> Harness {
        Harness::with_config(|origin| {
            hostile::guard_config()
                .origin(origin)
                .origin_connect_timeout("1s")
                .live()
        })
    }

    /// A guard on the config `config(origin)` returns.
    pub fn with_config(config: impl FnOnce(SocketAddr) -> GuardConfig) -> Harness {
        Harness::replying(Vec::new(), config)
    }

    /// As [`Harness::with_config`], in front of an origin that sends
    /// `after_connect` once it has read a `connect` ([`TestOrigin::replying`]).
    pub fn replying(
        after_connect: Vec<u8>,
        config: impl FnOnce(SocketAddr) -> GuardConfig,
    ) -> Harness {
        Harness::on(
            rtmp_guard::workers::Workers::default(),
            after_connect,
            config,
        )
    }

    /// As [`Harness::with_config`], with the sessions on one worker thread
    /// of their own, as the guard runs them (`Workers`).
    pub fn on_one_worker(config: impl FnOnce(SocketAddr) -> GuardConfig) -> Harness {
        let workers = rtmp_guard::workers::Workers::start(1).unwrap();
        Harness::on(workers, Vec::new(), config)
    }

    fn on(
        workers: rtmp_guard::workers::Workers,
        after_connect: Vec<u8>,
        config: impl FnOnce(SocketAddr) -> GuardConfig,
    ) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let origin = rt.block_on(TestOrigin::replying(after_connect));
        let text = config(origin.addr).build();
        let config = Config::parse(&text, "integration.toml").unwrap();
        let guard = rt
            .block_on(rtmp_guard::start_with(config, None, workers))
            .unwrap();
        Harness {
            _rt: rt,
            origin,
            guard,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.guard.rtmp_addrs[0]
    }

    pub fn blocked(&self, stage: Stage, reason: Reason) -> u64 {
        self.guard.guard.metrics.blocked_count(stage, reason)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.guard.stop();
    }
}
