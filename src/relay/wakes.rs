//! Which of a session's sources woke its task, so that a pass polls only
//! those.
//!
//! A task has one waker, so without this every wake-up polled all four
//! sources: a message from the origin woke a viewer's session to write it
//! on, and the pass also polled the client's socket, its outbox, the kick
//! and the idle timer. With thousands of viewers each of those is memory
//! that has left the cache since the session last ran: a few cache misses
//! on every message, for nothing. As `FuturesUnordered` does, each source
//! gets its own waker, which marks the source and wakes the task.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// One of the sources a session's task waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The client-to-origin direction: the client's socket, the origin's
    /// when full, the outbox to the origin, a held publish's auth request.
    Up = 1,
    /// The origin-to-client direction, likewise.
    Down = 2,
    /// The kick and the idle timer: both rare.
    Other = 4,
}

/// The sources woken since the task last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Woken(u8);

impl Woken {
    pub(super) fn has(self, source: Source) -> bool {
        self.0 & source as u8 != 0
    }
}

struct Shared {
    woken: AtomicU8,
    task: AtomicWaker,
}

/// A source's waker: marks the source, then wakes the task.
struct Mark {
    shared: Arc<Shared>,
    source: Source,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared
            .woken
            .fetch_or(self.source as u8, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

/// A session's wakers, one per source.
pub(super) struct Wakes {
    shared: Arc<Shared>,
    up: Waker,
    down: Waker,
    other: Waker,
}

impl Wakes {
    /// Every source starts woken, so that the first pass polls them all
    /// and each registers its waker.
    pub(super) fn new() -> Wakes {
        let shared = Arc::new(Shared {
            woken: AtomicU8::new(Source::Up as u8 | Source::Down as u8 | Source::Other as u8),
            task: AtomicWaker::new(),
        });
        let waker = |source| {
            Waker::from(Arc::new(Mark {
                shared: shared.clone(),
                source,
            }))
        };
        Wakes {
            up: waker(Source::Up),
            down: waker(Source::Down),
            other: waker(Source::Other),
            shared,
        }
    }

    /// The waker to poll `source` with.
    pub(super) fn waker(&self, source: Source) -> &Waker {
        match source {
            Source::Up => &self.up,
            Source::Down => &self.down,
            Source::Other => &self.other,
        }
    }

    /// Registers the task's waker, and takes the sources woken since the
    /// last call. In that order: a source woken in between wakes the task
    /// again, so none is missed.
    pub(super) fn take(&self, task: &Waker) -> Woken {
        self.shared.task.register(task);
        Woken(self.shared.woken.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task waker that counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn every_source_starts_woken_then_only_those_woken_since() {
        let (count, task) = task();
        let wakes = Wakes::new();
        let first = wakes.take(&task);
        assert!(first.has(Source::Up) && first.has(Source::Down) && first.has(Source::Other));
        assert_eq!(wakes.take(&task), Woken(0), "nothing woke since");

        wakes.waker(Source::Down).wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the task was woken");
        let woken = wakes.take(&task);
        assert!(woken.has(Source::Down));
        assert!(!woken.has(Source::Up) && !woken.has(Source::Other));
    }

    #[test]
    fn a_source_woken_from_another_thread_wakes_the_task_once_registered() {
        let (count, task) = task();
        let wakes = Wakes::new();
        wakes.take(&task);
        let other = wakes.waker(Source::Other).clone();
        std::thread::spawn(move || other.wake()).join().unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(wakes.take(&task).has(Source::Other));
    }
}
