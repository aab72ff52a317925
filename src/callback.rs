//! The HTTP auth callback, compatible with nginx-rtmp's `on_publish` and
//! `on_play`: a form POST per publish or play; a 2xx answer allows,
//! anything else denies. Answers are cached for `cache`, keyed on the URL
//! and everything sent, so a player reconnecting does not hit the service
//! each time. This module does the I/O; the policy decides what to ask.

use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::HttpAuth;

/// Why the service could not be asked; the app's `on_error` decides.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("bad auth request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("auth service unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
}

/// Cached answers kept at most; past it, expired ones are dropped, then
/// all.
const MAX_CACHED: usize = 10_000;

pub struct Callbacks {
    client: Client<HttpConnector, Full<Bytes>>,
    cache: DashMap<(String, String), (Instant, bool)>,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks {
            client: Client::builder(TokioExecutor::new()).build_http(),
            cache: DashMap::new(),
        }
    }
}

impl Callbacks {
    /// Asks the service about `form`. `Ok(allowed)`, or `Err(why)` when it
    /// could not be asked (timeout, refused, bad URL): then `on_error`
    /// decides.
    pub async fn ask(&self, auth: &HttpAuth, form: &str) -> Result<bool, CallbackError> {
        let key = (auth.url.clone(), form.to_string());
        if let Some(hit) = self.cache.get(&key) {
            let (at, allowed) = *hit;
            if at.elapsed() < auth.cache {
                return Ok(allowed);
            }
        }
        let allowed = self.post(auth, form).await?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, (at, _)| at.elapsed() < auth.cache);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        self.cache.insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }

    async fn post(&self, auth: &HttpAuth, form: &str) -> Result<bool, CallbackError> {
        let request = hyper::Request::post(&auth.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_string())))?;
        match tokio::time::timeout(auth.timeout, self.client.request(request)).await {
            Err(_) => Err(CallbackError::Timeout(auth.timeout)),
            Ok(response) => Ok(response?.status().is_success()),
        }
    }
}
