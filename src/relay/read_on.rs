//! When a direction reads on past tokio before it writes what it has.
//!
//! nginx-rtmp does not set `TCP_NODELAY`, so Nagle holds each small send
//! of its while the one before is unacknowledged. The guard's read of that
//! one sends the acknowledgement, and the held bytes arrive while the read
//! is still in the kernel: too late for it, and tokio takes a short read to
//! mean the socket is empty until its next poll. Written at once, the
//! output would go without them, and they would wait for the worker's next
//! turn at this session. So the pump reads on at once with a plain `recv`
//! ([`crate::transport::ReadNow`]), as HAProxy reads until the socket says
//! it is empty:
//! - when output ends inside a media message, for the rest of it (a
//!   7,500-byte message is two chunks, and nginx sends each on its own);
//! - when the last read began and ended at a message boundary, for the
//!   next message: the read released it if the guard had fallen behind.
//!
//! A read that ends a message it began inside of is not followed by
//! another: the next message is not due yet, and a `recv` that finds
//! nothing costs a syscall per message. At most [`READS`] reads follow one
//! of tokio's, which spend the task's budget where these do not, so a peer
//! that keeps sending cannot keep a worker reading.

/// Reads past tokio after one of tokio's, at most.
pub(super) const READS: u8 = 8;

/// A direction's reading on since tokio's last read.
#[derive(Debug, Default)]
pub(super) struct ReadOn {
    /// Reads past tokio since tokio's last read.
    reads: u8,
    /// The last read began at a message boundary.
    from_boundary: bool,
}

impl ReadOn {
    /// tokio read bytes, starting at a message boundary or inside one.
    pub(super) fn tokio_read(&mut self, from_boundary: bool) {
        self.reads = 0;
        self.from_boundary = from_boundary;
    }

    /// Output now ends inside a message or at a boundary: is a read on
    /// worth a try before it is written? Inside a message always: output
    /// that cannot read on waits for the rest ([`ReadOn::take`]).
    pub(super) fn wanted(&self, inside_message: bool) -> bool {
        inside_message || (self.from_boundary && self.reads < READS)
    }

    /// Counts a read on if one may be made now.
    pub(super) fn take(&mut self) -> bool {
        if self.reads < READS {
            self.reads += 1;
            true
        } else {
            false
        }
    }

    /// The read on found bytes, starting where `from_boundary` says.
    pub(super) fn found(&mut self, from_boundary: bool) {
        self.from_boundary = from_boundary;
    }

    /// The read on found nothing (or the stream cannot read on): none
    /// until tokio's next read.
    pub(super) fn found_nothing(&mut self) {
        self.reads = READS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_message_read_at_once_is_followed_by_a_read_for_the_next() {
        let mut on = ReadOn::default();
        on.tokio_read(true);
        assert!(on.wanted(false), "the next message may have been released");
        assert!(on.take());
        on.found(true);
        assert!(on.wanted(false), "and the one after it");
        assert!(on.take());
        on.found_nothing();
        assert!(!on.wanted(false), "the socket is empty: write");
        assert!(!on.take());
    }

    #[test]
    fn a_message_completed_from_inside_is_written_without_another_read() {
        let mut on = ReadOn::default();
        // A message's first chunk, then its rest.
        on.tokio_read(true);
        assert!(on.wanted(true), "the rest of the message");
        assert!(on.take());
        on.found(false);
        assert!(
            !on.wanted(false),
            "the next message is not due: no recv that would find nothing"
        );
    }

    #[test]
    fn reads_on_stop_after_the_limit_until_tokio_reads_again() {
        let mut on = ReadOn::default();
        on.tokio_read(true);
        for _ in 0..READS {
            assert!(on.wanted(false));
            assert!(on.take());
            on.found(true);
        }
        assert!(
            !on.wanted(false),
            "a peer that keeps sending waits for tokio"
        );
        assert!(
            on.wanted(true) && !on.take(),
            "output inside a message is wanted but cannot read on: it waits"
        );
        on.tokio_read(true);
        assert!(on.take(), "tokio's next read starts the count again");
    }

    #[test]
    fn a_read_that_began_inside_a_message_does_not_read_on_at_its_end() {
        let mut on = ReadOn::default();
        on.tokio_read(false);
        assert!(!on.wanted(false));
        assert!(on.wanted(true));
    }
}
