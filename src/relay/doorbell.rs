//! A waker that says it was used: the relay polls the client-to-origin
//! direction with it, and skips that direction on passes it did not ring.
//!
//! A viewer's session is woken by the origin on every message, and its
//! client sends almost nothing. Polling the client's direction on every
//! pass anyway read that direction's state, its outbox and tokio's state
//! for the client's socket, each a cache line no longer in cache at a
//! thousand viewers, to find nothing to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Rung by whatever the direction waits on; wakes the session's task.
pub(super) struct Doorbell {
    rung: AtomicBool,
    task: AtomicWaker,
}

impl Doorbell {
    /// A bell already rung: the direction's first pass must run.
    pub(super) fn new() -> Arc<Doorbell> {
        Arc::new(Doorbell {
            rung: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    /// Called on every pass of the task, with its context: true if the
    /// bell rang since the last call. A ring after this call wakes `cx`.
    pub(super) fn answer(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.rung.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Doorbell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Rung before the task wakes, so its next pass sees it.
        self.rung.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The waker that rings `bell`.
pub(super) fn waker(bell: &Arc<Doorbell>) -> Waker {
    Waker::from(bell.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wakes.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_ring_is_answered_once_and_wakes_the_task() {
        let task = Arc::new(Counter(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let cx = Context::from_waker(&task_waker);
        let bell = Doorbell::new();
        assert!(bell.answer(&cx), "the first pass runs the direction");
        assert!(!bell.answer(&cx), "not rung since");
        waker(&bell).wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(bell.answer(&cx));
        assert!(!bell.answer(&cx));
        // A clone held by a socket or an outbox rings it too.
        let held = waker(&bell);
        drop(bell.clone());
        held.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 2);
        assert!(bell.answer(&cx));
    }
}
