//! Live sessions, for listing and for ending them on the operator's word.
//!
//! A session registers when it starts relaying and is removed when its
//! [`Registration`] drops, so the registry cannot leak an entry even if
//! the session's task unwinds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;

use crate::policy::Kind;
use crate::verdict::Reason;

/// Why the operator ended a session, as the client and the log see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub reason: Reason,
    pub description: String,
}

/// One live session.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub client: SocketAddr,
    pub app: String,
    pub started: SystemTime,
    /// Streams published or played, without query strings.
    pub streams: Mutex<Vec<(Kind, String)>>,
    pub client_to_upstream: AtomicU64,
    pub upstream_to_client: AtomicU64,
    /// The operator's kick, once there is one. Set once and a waker rather
    /// than a channel: the relay checks it on every pass, and thousands of
    /// sessions each carry one.
    kick: OnceLock<Kick>,
    kick_waker: AtomicWaker,
}

impl Session {
    /// Sets the kick; true for the first.
    fn set_kick(&self, kick: Kick) -> bool {
        self.kick.set(kick).is_ok()
    }

    /// Ready with the kick once the session is kicked; wakes `cx` then.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        self.kick_waker.register(cx.waker());
        self.kick.get().cloned().map_or(Poll::Pending, Poll::Ready)
    }

    pub fn streams(&self) -> Vec<(Kind, String)> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_streams(&self, streams: &[(Kind, String)]) {
        *self.streams.lock().unwrap_or_else(|p| p.into_inner()) = streams.to_vec();
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.client_to_upstream.load(Ordering::Relaxed),
            self.upstream_to_client.load(Ordering::Relaxed),
        )
    }
}

#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    live: DashMap<u64, Arc<Session>>,
    /// Kicks made so far, for [`KickWatch`]: a line every session reads
    /// on every pass and only a kick writes, so it stays in every cache.
    kicks: Epoch,
}

#[derive(Default)]
#[repr(align(64))]
struct Epoch(AtomicU64);

/// A session's relay watching for its kick. It reads the session's own
/// kick only after a kick somewhere, or when its waker changes: the
/// session's entry is otherwise cold memory, and with thousands of
/// viewers reading it on every message was a cache miss each.
pub struct KickWatch<'a> {
    sessions: &'a Sessions,
    session: &'a Session,
    seen: u64,
    waker: Option<Waker>,
}

impl KickWatch<'_> {
    /// Ready with the kick once the session is kicked; wakes `cx` then.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Kick> {
        // Read before the session's kick: a kick after this read bumps
        // the count, then wakes, so the next pass looks again.
        let kicks = self.sessions.kicks.0.load(Ordering::Acquire);
        let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered && kicks == self.seen {
            return Poll::Pending;
        }
        self.seen = kicks;
        self.waker = Some(cx.waker().clone());
        self.session.poll_kicked(cx)
    }
}

/// A session's place in the registry; removes it when dropped.
pub struct Registration<'a> {
    pub session: Arc<Session>,
    sessions: &'a Sessions,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.live.remove(&self.session.id);
    }
}

impl Sessions {
    pub fn register(&self, client: SocketAddr, app: &str) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(Session {
            id,
            client,
            app: app.to_string(),
            started: SystemTime::now(),
            streams: Mutex::new(Vec::new()),
            client_to_upstream: AtomicU64::new(0),
            upstream_to_client: AtomicU64::new(0),
            kick: OnceLock::new(),
            kick_waker: AtomicWaker::new(),
        });
        self.live.insert(id, session.clone());
        Registration {
            session,
            sessions: self,
        }
    }

    /// Ends a session; the first kick wins.
    pub fn kick(&self, session: &Session, kick: Kick) {
        if session.set_kick(kick) {
            self.kicks.0.fetch_add(1, Ordering::Release);
            session.kick_waker.wake();
        }
    }

    /// Watches `session`, registered here, for its kick.
    pub fn watch<'a>(&'a self, session: &'a Session) -> KickWatch<'a> {
        KickWatch {
            sessions: self,
            session,
            seen: 0,
            waker: None,
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Session>> {
        self.live.get(&id).map(|s| s.clone())
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = self.live.iter().map(|s| s.clone()).collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Kicks every session `which` picks; returns how many.
    pub fn kick_where(&self, which: impl Fn(&Session) -> bool, kick: &Kick) -> usize {
        let mut n = 0;
        for s in self.live.iter() {
            if which(&s) {
                self.kick(&s, kick.clone());
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Resolves when the session is kicked; never otherwise.
    async fn kicked(session: &Session) -> Kick {
        poll_fn(|cx| session.poll_kicked(cx)).await
    }

    #[tokio::test]
    async fn a_kick_reaches_the_session_and_dropping_unregisters() {
        let sessions = Sessions::default();
        let addr: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let reg = sessions.register(addr, "live");
        let other = sessions.register("127.0.0.3:5000".parse().unwrap(), "live");
        assert_eq!(sessions.len(), 2);
        let kick = Kick {
            reason: Reason::Banned,
            description: "banned".into(),
        };
        let n = sessions.kick_where(|s| s.client.ip() == addr.ip(), &kick);
        assert_eq!(n, 1);
        assert_eq!(kicked(&reg.session).await, kick);
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), kicked(&other.session));
        assert!(pending.await.is_err(), "the other session was not kicked");
        drop(reg);
        assert_eq!(sessions.len(), 1);
    }

    #[tokio::test]
    async fn a_watch_sees_its_own_kick_and_not_anothers() {
        let sessions = Sessions::default();
        let mine = sessions.register("127.0.0.2:5000".parse().unwrap(), "live");
        let other = sessions.register("127.0.0.3:5000".parse().unwrap(), "live");
        let kick = Kick {
            reason: Reason::Kicked,
            description: "kicked".into(),
        };
        let mut watch = sessions.watch(&mine.session);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(watch.poll(&mut cx).is_pending());
        sessions.kick(&other.session, kick.clone());
        assert!(watch.poll(&mut cx).is_pending(), "another session's kick");
        // Waiting, as the relay does; the kick must wake it.
        let waiting = poll_fn(|cx| watch.poll(cx));
        let kicking = async {
            tokio::task::yield_now().await;
            sessions.kick(&mine.session, kick.clone());
        };
        let both = async { tokio::join!(waiting, kicking) };
        let (got, ()) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
            .await
            .expect("the kick woke the watch");
        assert_eq!(got, kick);
    }
}
