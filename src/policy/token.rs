//! Signed, expiring stream URLs, each for one role.
//!
//! `live/cam1?expires=UNIX&role=ROLE&token=HEX`, where ROLE is `publish` or
//! `play` and HEX is
//! `hex(HMAC-SHA256(secret, "live/cam1?expires=UNIX&role=ROLE"))`. A token
//! may also bind the client address:
//! `live/cam1?expires=UNIX&ip=ADDR&role=ROLE&token=HEX`, the HMAC then
//! covering `"live/cam1?expires=UNIX&ip=ADDR&role=ROLE"`. Verification
//! rebuilds the signed text from the app, the stream and the parameters,
//! so a token for another app, stream or address never verifies, and a
//! token verifies only for the role it names: a viewer's play URL cannot
//! publish, nor a publisher's URL play. This is the only format accepted.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::verdict::Kind;

/// Why a token was refused; never shown with the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    Expired,
    WrongAddress,
    /// A valid token for the other role (a play token used to publish).
    WrongRole,
    BadSignature,
}

impl TokenError {
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Missing => "missing token",
            TokenError::Malformed => "malformed token",
            TokenError::Expired => "expired token",
            TokenError::WrongAddress => "token issued for another address",
            TokenError::WrongRole => "token issued for another role",
            TokenError::BadSignature => "invalid token",
        }
    }
}

/// The role a token names: `publish` or `play`.
fn role_of(name: &str) -> Option<Kind> {
    match name {
        "publish" => Some(Kind::Publish),
        "play" => Some(Kind::Play),
        _ => None,
    }
}

fn signed_text(app: &str, stream: &str, expires: u64, ip: Option<&str>, role: Kind) -> String {
    let role = role.as_str();
    match ip {
        Some(ip) => format!("{app}/{stream}?expires={expires}&ip={ip}&role={role}"),
        None => format!("{app}/{stream}?expires={expires}&role={role}"),
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

/// The query string (without `?`) of a signed URL for `role`.
pub fn sign(
    secret: &[u8],
    app: &str,
    stream: &str,
    expires: u64,
    ip: Option<IpAddr>,
    role: Kind,
) -> String {
    let ip = ip.map(|i| i.to_string());
    let text = signed_text(app, stream, expires, ip.as_deref(), role);
    let token = hex::encode(mac(secret, &text));
    let role = role.as_str();
    match ip {
        Some(ip) => format!("expires={expires}&ip={ip}&role={role}&token={token}"),
        None => format!("expires={expires}&role={role}&token={token}"),
    }
}

/// Verifies the parameters of a stream URL for `app`/`stream`, used to
/// `role` (the command's: publish or play), from `client` at time `now`
/// (UNIX seconds). The signature is checked before anything the URL claims
/// (expiry, role, address) is believed.
pub fn verify(
    secret: &[u8],
    app: &str,
    stream: &str,
    params: &[(String, String)],
    role: Kind,
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
    let signed_role = get("role").and_then(role_of).ok_or(TokenError::Malformed)?;
    let given = hex::decode(token).map_err(|_| TokenError::Malformed)?;
    let ip = get("ip");
    let expected = mac(secret, &signed_text(app, stream, expires, ip, signed_role));
    if expected.is_empty() || !bool::from(given.ct_eq(&expected)) {
        return Err(TokenError::BadSignature);
    }
    if expires <= now {
        return Err(TokenError::Expired);
    }
    if signed_role != role {
        return Err(TokenError::WrongRole);
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

    /// Verifies `query` for live/cam1 as `role`, from the usual client.
    fn check(query: &str, role: Kind) -> Result<(), TokenError> {
        verify(SECRET, "live", "cam1", &params(query), role, client(), NOW)
    }

    #[test]
    fn a_signed_url_verifies_for_its_role() {
        for role in [Kind::Publish, Kind::Play] {
            let q = sign(SECRET, "live", "cam1", NOW + 60, None, role);
            assert_eq!(check(&q, role), Ok(()), "{q}");
        }
        assert!(sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Play)
            .starts_with(&format!("expires={}&role=play&token=", NOW + 60)));
    }

    #[test]
    fn a_play_token_cannot_publish() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Play);
        assert_eq!(check(&q, Kind::Publish), Err(TokenError::WrongRole));
    }

    #[test]
    fn a_publish_token_cannot_play() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Publish);
        assert_eq!(check(&q, Kind::Play), Err(TokenError::WrongRole));
    }

    #[test]
    fn a_token_without_a_role_is_refused() {
        // Signed the old way, over the text without a role: no role
        // parameter at all is malformed...
        let old_text = format!("live/cam1?expires={}", NOW + 60);
        let old = format!(
            "expires={}&token={}",
            NOW + 60,
            hex::encode(mac(SECRET, &old_text))
        );
        for role in [Kind::Publish, Kind::Play] {
            assert_eq!(check(&old, role), Err(TokenError::Malformed));
        }
        // ...and so is a role that is neither publish nor play, or empty.
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Play);
        for bad in ["role=", "role=Play", "role=admin"] {
            let q = q.replace("role=play", bad);
            assert_eq!(check(&q, Kind::Play), Err(TokenError::Malformed), "{q}");
        }
        // Dropping the role parameter from a new token too.
        let stripped: Vec<_> = params(&q)
            .into_iter()
            .filter(|(k, _)| k != "role")
            .collect();
        assert_eq!(
            verify(SECRET, "live", "cam1", &stripped, Kind::Play, client(), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_tampered_role_breaks_the_signature() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Play);
        let forged = q.replace("role=play", "role=publish");
        assert_eq!(check(&forged, Kind::Publish), Err(TokenError::BadSignature));
        let bound = sign(SECRET, "live", "cam1", NOW + 60, Some(client()), Kind::Play);
        let forged = bound.replace("role=play", "role=publish");
        assert_eq!(check(&forged, Kind::Publish), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let q = sign(SECRET, "live", "cam1", NOW, None, Kind::Publish);
        assert_eq!(check(&q, Kind::Publish), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_for_another_app_stream_or_secret_is_refused() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Play);
        let p = params(&q);
        let play = Kind::Play;
        assert_eq!(
            verify(SECRET, "vod", "cam1", &p, play, client(), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(SECRET, "live", "cam2", &p, play, client(), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(b"another secret!!", "live", "cam1", &p, play, client(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn address_bound_tokens_check_the_client() {
        let q = sign(
            SECRET,
            "live",
            "cam1",
            NOW + 60,
            Some(client()),
            Kind::Publish,
        );
        assert!(q.contains("&ip=192.0.2.7&role=publish&token="), "{q}");
        let p = params(&q);
        let publish = Kind::Publish;
        assert_eq!(
            verify(SECRET, "live", "cam1", &p, publish, client(), NOW),
            Ok(())
        );
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(
            verify(SECRET, "live", "cam1", &p, publish, other, NOW),
            Err(TokenError::WrongAddress)
        );
        // Dropping the ip parameter breaks the signature.
        let stripped: Vec<_> = p.into_iter().filter(|(k, _)| k != "ip").collect();
        assert_eq!(
            verify(SECRET, "live", "cam1", &stripped, publish, client(), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_or_missing_tokens_are_refused() {
        let q = sign(SECRET, "live", "cam1", NOW + 60, None, Kind::Publish);
        let tampered = q.replace("token=", "token=00");
        assert_eq!(
            check(&tampered, Kind::Publish),
            Err(TokenError::BadSignature)
        );
        let later = q.replace(
            &format!("expires={}", NOW + 60),
            &format!("expires={}", NOW + 6000),
        );
        assert_eq!(check(&later, Kind::Publish), Err(TokenError::BadSignature));
        assert_eq!(
            check("token=zz&expires=1&role=publish", Kind::Publish),
            Err(TokenError::Malformed)
        );
        assert_eq!(check("", Kind::Publish), Err(TokenError::Missing));
    }
}
