//! TLS for tests: certificates made on the spot (rcgen), the `[tls]` table
//! that serves them, and a blocking rustls client that trusts exactly the
//! certificate it is given, so a handshake tells which certificate the
//! guard served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName};

use rtmp_guard::rtmp::handshake::ClientHandshake;

/// A self-signed certificate for `localhost` and `127.0.0.1`.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn new() -> TestCert {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("certificate params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them
    /// atomically); returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write PEM");
            std::fs::rename(&tmp, path).expect("rename PEM");
        }
        (cert, key)
    }
}

/// The `[tls]` table for RTMPS on `listen` with these files.
pub fn tls_table(listen: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\nlisten = [\"{listen}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

pub type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A client config trusting `trusted` only (nothing when None).
pub fn client_config(trusted: Option<&TestCert>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(cert) = trusted {
        roots
            .add(CertificateDer::from(cert.der.clone()))
            .expect("trust the test certificate");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr`, after sending `prefix` in the clear (a
/// PROXY header), with the handshake done. Err: the handshake failed.
pub fn connect_after(
    addr: SocketAddr,
    prefix: &[u8],
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsClient> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(prefix)?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// As [`connect_after`] with nothing before the ClientHello.
pub fn connect(addr: SocketAddr, trusted: &TestCert) -> std::io::Result<TlsClient> {
    connect_after(addr, b"", client_config(Some(trusted)))
}

/// A client RTMP handshake over `s`.
pub fn rtmp_handshake<S: Read + Write>(s: &mut S) {
    let (mut hs, c0c1) = ClientHandshake::start().expect("handshake start");
    s.write_all(&c0c1).expect("send C0C1");
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read S0S1S2");
        assert!(n > 0, "closed during the RTMP handshake");
        let step = hs.feed(&buf[..n]).expect("server handshake");
        if step.done {
            s.write_all(&step.response).expect("send C2");
            return;
        }
    }
}

/// Whether a stream was closed by the peer within `within`.
pub fn closed_within<S: Read>(s: &mut S, within: Duration) -> bool {
    let end = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
