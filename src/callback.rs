//! The HTTP auth callback, compatible with nginx-rtmp's `on_publish` and
//! `on_play`: a form POST per publish or play; a 2xx answer allows; a 3xx
//! allows under the stream name its `Location` gives (without one, as
//! sent), as nginx-rtmp reads it; anything else denies. Answers are
//! cached for `cache`, the rename with them, keyed on the URL and
//! everything sent, so a player reconnecting does not hit the service
//! each time. This module does the I/O; the policy decides what to ask,
//! and what a `Location` means.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// Bytes the cached answers may take, all apps together: each counts its
/// URL, its form and [`ENTRY_OVERHEAD`]. Clients choose the forms (stream
/// names and queries of up to `max_command_size`), so the bound is on
/// bytes, not only on entries.
pub const MAX_CACHE_BYTES: usize = 8 << 20;
/// Answers kept at most, however small.
pub const MAX_CACHED: usize = 10_000;
/// A larger answer is not cached, so one huge form cannot push out many.
pub const MAX_ENTRY_BYTES: usize = MAX_CACHE_BYTES / 64;
/// What an entry costs besides its URL and form: the map's slot, the two
/// strings' headers, the answer.
const ENTRY_OVERHEAD: usize = 96;

/// What the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 2xx, or a 3xx without a `Location` (or an empty one).
    Allow,
    /// Any other status.
    Deny,
    /// A 3xx's `Location`, as sent (bytes that are not UTF-8 read as
    /// U+FFFD): the policy reads it as nginx-rtmp does.
    Redirect(String),
}

/// One cached answer.
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    /// The `cache` it was stored under: past it, it may be dropped.
    ttl: Duration,
    reply: Reply,
    /// What it counts against [`MAX_CACHE_BYTES`].
    weight: usize,
}

/// Answers by (URL, form), bounded in entries and in bytes. When full,
/// expired answers go first, then the oldest, down to half the bounds (so
/// a flood of distinct forms costs a sort now and then, not one per
/// question). Time is passed in.
#[derive(Debug, Default)]
pub struct AnswerCache {
    entries: HashMap<(String, String), Answer>,
    /// Sum of the entries' weights.
    bytes: usize,
}

fn weight(url: &str, form: &str, reply: &Reply) -> usize {
    let location = match reply {
        Reply::Redirect(l) => l.len(),
        Reply::Allow | Reply::Deny => 0,
    };
    url.len()
        .saturating_add(form.len())
        .saturating_add(location)
        .saturating_add(ENTRY_OVERHEAD)
}

impl AnswerCache {
    /// The answer to `form` at `url`, if one is younger than `max_age`.
    pub fn get(&self, url: &str, form: &str, max_age: Duration, now: Instant) -> Option<Reply> {
        let hit = self.entries.get(&(url.to_string(), form.to_string()))?;
        (now.saturating_duration_since(hit.at) < max_age).then(|| hit.reply.clone())
    }

    /// Stores an answer for `ttl`, making room if the cache is full.
    pub fn insert(&mut self, url: &str, form: &str, reply: Reply, ttl: Duration, now: Instant) {
        let w = weight(url, form, &reply);
        if ttl.is_zero() || w > MAX_ENTRY_BYTES {
            return;
        }
        let key = (url.to_string(), form.to_string());
        if let Some(old) = self.entries.remove(&key) {
            self.bytes = self.bytes.saturating_sub(old.weight);
        }
        if self.bytes.saturating_add(w) > MAX_CACHE_BYTES || self.entries.len() >= MAX_CACHED {
            self.make_room(now);
        }
        self.bytes = self.bytes.saturating_add(w);
        self.entries.insert(
            key,
            Answer {
                at: now,
                ttl,
                reply,
                weight: w,
            },
        );
    }

    /// Drops expired answers; if that is not enough, the oldest, until at
    /// most half of each bound is used.
    fn make_room(&mut self, now: Instant) {
        self.entries
            .retain(|_, a| now.saturating_duration_since(a.at) < a.ttl);
        self.recount();
        if self.bytes <= MAX_CACHE_BYTES / 2 && self.entries.len() <= MAX_CACHED / 2 {
            return;
        }
        let mut ages: Vec<(Instant, usize)> =
            self.entries.values().map(|a| (a.at, a.weight)).collect();
        ages.sort_unstable_by_key(|(at, _)| std::cmp::Reverse(*at));
        let (mut kept, mut count) = (0usize, 0usize);
        let mut cutoff = None;
        for (at, w) in ages {
            if kept.saturating_add(w) > MAX_CACHE_BYTES / 2 || count >= MAX_CACHED / 2 {
                cutoff = Some(at);
                break;
            }
            kept = kept.saturating_add(w);
            count += 1;
        }
        if let Some(cutoff) = cutoff {
            // Answers as old as the cutoff go too, ties included.
            self.entries.retain(|_, a| a.at > cutoff);
            self.recount();
        }
    }

    fn recount(&mut self) {
        self.bytes = self
            .entries
            .values()
            .fold(0usize, |sum, a| sum.saturating_add(a.weight));
    }

    /// Bytes counted against [`MAX_CACHE_BYTES`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

pub struct Callbacks {
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<AnswerCache>,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks {
            client: Client::builder(TokioExecutor::new()).build_http(),
            cache: Mutex::new(AnswerCache::default()),
        }
    }
}

impl Callbacks {
    fn cache(&self) -> std::sync::MutexGuard<'_, AnswerCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the service about `form`. `Ok(reply)`, or `Err(why)` when it
    /// could not be asked (timeout, refused, bad URL): then `on_error`
    /// decides.
    pub async fn ask(&self, auth: &HttpAuth, form: &str) -> Result<Reply, CallbackError> {
        if let Some(reply) = self
            .cache()
            .get(&auth.url, form, auth.cache, Instant::now())
        {
            return Ok(reply);
        }
        let reply = self.post(auth, form).await?;
        self.cache()
            .insert(&auth.url, form, reply.clone(), auth.cache, Instant::now());
        Ok(reply)
    }

    async fn post(&self, auth: &HttpAuth, form: &str) -> Result<Reply, CallbackError> {
        let request = hyper::Request::post(&auth.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_string())))?;
        match tokio::time::timeout(auth.timeout, self.client.request(request)).await {
            Err(_) => Err(CallbackError::Timeout(auth.timeout)),
            Ok(response) => {
                let response = response?;
                let location = response.headers().get(hyper::header::LOCATION);
                Ok(reply_of(response.status(), location.map(|l| l.as_bytes())))
            }
        }
    }
}

/// What an answer means, as nginx-rtmp's `on_publish`/`on_play` read it:
/// 2xx allows; 3xx allows, renamed by a non-empty `Location` (the first,
/// if several); anything else denies.
pub fn reply_of(status: hyper::StatusCode, location: Option<&[u8]>) -> Reply {
    if status.is_success() {
        return Reply::Allow;
    }
    if !status.is_redirection() {
        return Reply::Deny;
    }
    match location.map(String::from_utf8_lossy) {
        Some(l) if !l.is_empty() => Reply::Redirect(l.into_owned()),
        _ => Reply::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:8080/auth";
    const TTL: Duration = Duration::from_secs(30);

    fn location_len(r: &Reply) -> usize {
        match r {
            Reply::Redirect(l) => l.len(),
            _ => 0,
        }
    }

    /// What the entries really hold, counted apart from the cache's own sum.
    fn held(c: &AnswerCache) -> usize {
        c.entries
            .iter()
            .map(|((u, f), a)| u.len() + f.len() + ENTRY_OVERHEAD + location_len(&a.reply))
            .sum()
    }

    /// A distinct form of about `size` bytes, as a client's long query
    /// makes one.
    fn form(i: usize, size: usize) -> String {
        let pad = "x".repeat(size);
        format!("call=play&addr=192.0.2.1&app=live&name=s{i}&junk={pad}")
    }

    #[test]
    fn a_flood_of_large_distinct_forms_stays_under_the_byte_bound() {
        let mut c = AnswerCache::default();
        let t0 = Instant::now();
        let size = MAX_ENTRY_BYTES - 200;
        let mut inserted = 0usize;
        // 64 MiB of distinct forms, all still fresh: expiry frees nothing.
        for i in 0..(64 << 20) / size {
            let now = t0 + Duration::from_millis(i as u64);
            c.insert(URL, &form(i, size), Reply::Allow, TTL, now);
            inserted += size;
            assert!(c.bytes() <= MAX_CACHE_BYTES, "{} after {i}", c.bytes());
            assert_eq!(c.bytes(), held(&c), "the count drifted after {i}");
        }
        assert!(inserted > 4 * MAX_CACHE_BYTES);
        // The newest answers are kept and served.
        let last = (64 << 20) / size - 1;
        let now = t0 + Duration::from_millis(last as u64 + 1);
        assert_eq!(c.get(URL, &form(last, size), TTL, now), Some(Reply::Allow));
        assert!(c.len() > 1);
    }

    #[test]
    fn small_forms_are_bounded_in_entries() {
        let mut c = AnswerCache::default();
        let t0 = Instant::now();
        for i in 0..3 * MAX_CACHED {
            c.insert(
                URL,
                &form(i, 0),
                Reply::Deny,
                TTL,
                t0 + Duration::from_micros(i as u64),
            );
            assert!(c.len() <= MAX_CACHED);
            assert!(c.bytes() <= MAX_CACHE_BYTES);
        }
    }

    #[test]
    fn an_oversized_form_is_not_cached() {
        let mut c = AnswerCache::default();
        let now = Instant::now();
        let big = form(0, MAX_ENTRY_BYTES);
        c.insert(URL, &big, Reply::Allow, TTL, now);
        assert!(c.is_empty());
        assert_eq!(c.get(URL, &big, TTL, now), None);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn answers_expire_and_expired_ones_go_first() {
        let mut c = AnswerCache::default();
        let t0 = Instant::now();
        c.insert(URL, "a", Reply::Allow, TTL, t0);
        assert_eq!(c.get(URL, "a", TTL, t0 + TTL / 2), Some(Reply::Allow));
        assert_eq!(c.get(URL, "a", TTL, t0 + TTL), None);
        assert_eq!(c.get("http://other/", "a", TTL, t0), None);
        // Replacing an answer does not count it twice.
        c.insert(URL, "a", Reply::Deny, TTL, t0 + TTL);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), held(&c));
        assert_eq!(c.get(URL, "a", TTL, t0 + TTL), Some(Reply::Deny));
        // A zero cache time caches nothing.
        c.insert(URL, "b", Reply::Allow, Duration::ZERO, t0);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_rename_is_cached_with_its_answer_and_counted() {
        let mut c = AnswerCache::default();
        let t0 = Instant::now();
        let renamed = Reply::Redirect("renamed1".into());
        c.insert(URL, "a", renamed.clone(), TTL, t0);
        assert_eq!(c.get(URL, "a", TTL, t0 + TTL / 2), Some(renamed));
        assert_eq!(c.bytes(), held(&c));
        assert_eq!(c.bytes(), URL.len() + 1 + "renamed1".len() + ENTRY_OVERHEAD);
    }

    #[test]
    fn statuses_read_as_nginx_rtmp_reads_them() {
        use hyper::StatusCode as S;
        assert_eq!(reply_of(S::OK, None), Reply::Allow);
        assert_eq!(reply_of(S::NO_CONTENT, Some(b"x")), Reply::Allow);
        for status in [
            S::FOUND,
            S::MOVED_PERMANENTLY,
            S::SEE_OTHER,
            S::TEMPORARY_REDIRECT,
        ] {
            assert_eq!(
                reply_of(status, Some(b"renamed1")),
                Reply::Redirect("renamed1".into())
            );
            // nginx-rtmp goes on with the name as sent.
            assert_eq!(reply_of(status, None), Reply::Allow);
            assert_eq!(reply_of(status, Some(b"")), Reply::Allow);
        }
        assert_eq!(
            reply_of(S::FOUND, Some(b"a\xffb")),
            Reply::Redirect("a\u{FFFD}b".into())
        );
        for status in [
            S::FORBIDDEN,
            S::NOT_FOUND,
            S::INTERNAL_SERVER_ERROR,
            S::CONTINUE,
        ] {
            assert_eq!(reply_of(status, Some(b"renamed1")), Reply::Deny);
        }
    }
}
