//! Signed, expiring stream URLs.
//!
//! `live/cam1?expires=UNIX&token=HEX`, where HEX is
//! `hex(HMAC-SHA256(secret, "live/cam1?expires=UNIX"))`. A token may also
//! bind the client address: `live/cam1?expires=UNIX&ip=ADDR&token=HEX`, the
//! HMAC then covering `"live/cam1?expires=UNIX&ip=ADDR"`. The token is
//! always the last parameter, and verification rebuilds the signed text
//! from the app, the stream and the parameters, so a token for another
//! app, stream or address never verifies.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a token was refused; never shown with the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    Expired,
    WrongAddress,
    BadSignature,
}

impl TokenError {
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Missing => "missing token",
            TokenError::Malformed => "malformed token",
            TokenError::Expired => "expired token",
            TokenError::WrongAddress => "token issued for another address",
            TokenError::BadSignature => "invalid token",
        }
    }
}

fn signed_text(app: &str, stream: &str, expires: u64, ip: Option<&str>) -> String {
    match ip {
        Some(ip) => format!("{app}/{stream}?expires={expires}&ip={ip}"),
        None => format!("{app}/{stream}?expires={expires}"),
    }
}

fn mac(secret: &[u8], text: &str) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(text.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// The query string (without `?`) of a signed URL.
pub fn sign(secret: &[u8], app: &str, stream: &str, expires: u64, ip: Option<IpAddr>) -> String {
    let ip = ip.map(|i| i.to_string());
    let text = signed_text(app, stream, expires, ip.as_deref());
    let token = hex::encode(mac(secret, &text));
    match ip {
        Some(ip) => format!("expires={expires}&ip={ip}&token={token}"),
        None => format!("expires={expires}&token={token}"),
    }
}

/// Verifies the parameters of a stream URL for `app`/`stream` from
/// `client` at time `now` (UNIX seconds).
pub fn verify(
    secret: &[u8],
    app: &str,
    stream: &str,
    params: &[(String, String)],
    client: IpAddr,
    now: u64,
) -> Result<(), TokenError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let token = get("token").ok_or(TokenError::Missing)?;
    let expires: u64 = get("expires")
        .ok_or(TokenError::Malformed)?
        .parse()
        .map_err(|_| TokenError::Malformed)?;
    let given = hex::decode(token).map_err(|_| TokenError::Malformed)?;
    let ip = get("ip");
    let expected = mac(secret, &signed_text(app, stream, expires, ip));
    if expected.is_empty() || !bool::from(given.ct_eq(&expected)) {
        return Err(TokenError::BadSignature);
    }
    if expires <= now {
        return Err(TokenError::Expired);
    }
    if let Some(ip) = ip {
        let bound: IpAddr = ip.parse().map_err(|_| TokenError::Malformed)?;
        if crate::admit::prefix::canonical(bound) != crate::admit::prefix::canonical(client) {
            return Err(TokenError::WrongAddress);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-secret";
    const NOW: u64 = 1_800_000_000;

    fn params(query: &str) -> Vec<(String, String)> {
        super::super::parse_query(query)
    }

    fn client() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn a_signed_url_verifies() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None);
        assert_eq!(
            verify(SECRET, "live", "cam1", &params(&q), client(), NOW),
            Ok(())
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let q = sign(SECRET, "live", "cam1", NOW, None);
        assert_eq!(
            verify(SECRET, "live", "cam1", &params(&q), client(), NOW),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_for_another_app_stream_or_secret_is_refused() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None);
        let p = params(&q);
        assert_eq!(
            verify(SECRET, "vod", "cam1", &p, client(), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, "live", "cam2", &p, client(), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"another secret!!", "live", "cam1", &p, client(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn address_bound_tokens_check_the_client() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, Some(client()));
        let p = params(&q);
        assert_eq!(verify(SECRET, "live", "cam1", &p, client(), NOW), Ok(()));
        assert_eq!(
            verify(
                SECRET,
                "live",
                "cam1",
                &p,
                "192.0.2.8".parse().unwrap(),
                NOW
            ),
            Err(TokenError::WrongAddress)
        );
        // Dropping the ip parameter breaks the signature.
        let stripped: Vec<_> = p.into_iter().filter(|(k, _)| k != "ip").collect();
        assert_eq!(
            verify(SECRET, "live", "cam1", &stripped, client(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_or_missing_tokens_are_refused() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None);
        let tampered = q.replace("token=", "token=00");
        assert_eq!(
            verify(SECRET, "live", "cam1", &params(&tampered), client(), NOW),
            Err(TokenError::BadSignature)
        );
        let later = q.replace(
            &format!("expires={}", NOW + 60),
            &format!("expires={}", NOW + 6000),
        );
        assert_eq!(
            verify(SECRET, "live", "cam1", &params(&later), client(), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(
                SECRET,
                "live",
                "cam1",
                &params("token=zz&expires=1"),
                client(),
                NOW
            ),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(SECRET, "live", "cam1", &[], client(), NOW),
            Err(TokenError::Missing)
        );
    }
}
