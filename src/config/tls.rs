//! TLS material named by the config: the RTMPS listeners' certificate and
//! key, and the CA certificates an upstream's servers must chain to.
//!
//! They are read when the config is, so a reload re-reads them, and a file
//! that is missing, unreadable or does not make a working rustls config
//! fails the reload like any invalid value: the old config, and its
//! certificate, stay in force. rustls with the *ring* provider, TLS 1.2
//! and 1.3 only, rustls' safe defaults otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::locate::{Invalid, PathSeg};
use super::resolve;

/// The versions the guard speaks, on both sides.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `[tls]`, validated: the listeners and a ready rustls server config.
#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<std::net::SocketAddr>,
    /// Resolved against the config file's directory.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: std::time::Duration,
    /// Built from the files when the config was read; new connections
    /// take the config (and so the certificate) current at accept.
    pub server: Arc<ServerConfig>,
}

/// An upstream's TLS: the client config, and the name its servers'
/// certificates are checked against when the config names one.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub client: Arc<ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The name `server` ("host:port") must prove: the configured one, or
    /// the host of the address.
    pub fn name_for(&self, server: &str) -> Option<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Some(name.clone());
        }
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).ok()
    }
}

pub(super) fn build_tls(raw: super::raw::Tls, base: Option<&Path>) -> Result<Tls, Invalid> {
    let at = |key: &str| vec![PathSeg::Key("tls".into()), PathSeg::Key(key.into())];
    let cert_file = resolve(base, &raw.cert_file);
    let key_file = resolve(base, &raw.key_file);
    let certs = read_certs(&cert_file).map_err(|why| Invalid {
        path: at("cert_file"),
        why,
    })?;
    let key = read_key(&key_file).map_err(|why| Invalid {
        path: at("key_file"),
        why,
    })?;
    let server = server_config(certs, key).map_err(|why| Invalid {
        path: at("key_file"),
        why,
    })?;
    Ok(Tls {
        listen: raw.listen,
        cert_file,
        key_file,
        handshake_timeout: raw.handshake_timeout,
        server: Arc::new(server),
    })
}

/// A server config for one certificate chain and its key.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS config: {e}"))?;
    // No TLS 1.3 session tickets after the handshake: librtmp over GnuTLS
    // (rtmpdump, and encoders built on it) fails its RTMP handshake on
    // them. Sessions are long, reconnects rare, and a reload starts a new
    // config anyway, so resumption would buy little.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// An upstream's client config: its `ca_file`'s certificates, or the
/// Mozilla roots. `at` locates errors under the upstream.
pub(super) fn build_upstream_tls(
    ca_file: Option<&Path>,
    server_name: Option<&str>,
    base: Option<&Path>,
    at: impl Fn(&str) -> Vec<PathSeg>,
) -> Result<UpstreamTls, Invalid> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let path = resolve(base, file);
            let certs = read_certs(&path).map_err(|why| Invalid {
                path: at("ca_file"),
                why,
            })?;
            for cert in certs {
                roots.add(cert).map_err(|e| Invalid {
                    path: at("ca_file"),
                    why: format!("{}: {e}", path.display()),
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Invalid {
            path: at("tls"),
            why: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = server_name
        .map(|name| {
            ServerName::try_from(name.to_string()).map_err(|e| Invalid {
                path: at("tls_server_name"),
                why: format!("{name:?} is not a DNS name or IP address: {e}"),
            })
        })
        .transpose()?;
    Ok(UpstreamTls {
        client: Arc::new(client),
        server_name,
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
