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
//! - when the last read began and ended at a message boundary, for a next
//!   message, if the session's bytes had last moved less than
//!   [`OFTEN_MS`] before that read (its sender writes often, or the
//!   worker came back to it late). nginx holds a message only when it
//!   sends it before the guard has read the one before, that is when the
//!   guard is behind by the gap between two; where it is not, the `recv`
//!   finds nothing and costs a syscall, on every message. A stream of 5
//!   messages a second is 200 ms apart, and a worker that far behind has
//!   worse trouble; one of 100 a second is read on.
//!
//! A read that ends a message it began inside of is not followed by
//! another: the next message is not due yet. Reads on after one of
//! tokio's, which spend the task's budget where these do not, may ask for
//! [`BUDGET`] bytes in all, so a peer that keeps sending cannot keep a
//! worker reading.

/// What the reads on after one of tokio's may ask for, in all: two
/// messages' rests at the relay's coalescing limit, or several small
/// messages.
pub(super) const BUDGET: usize = 32 * 1024;

/// A session whose bytes moved less than this long before tokio's read
/// reads on at message boundaries: its sender's next message may have
/// been held for this read's acknowledgement.
pub(super) const OFTEN_MS: u64 = 50;

/// What a read on at a message boundary asks for: a chunk of nginx-rtmp's
/// default size with its header. More goes on with the next read. With
/// less than this left of the budget, none is made: a sliver of the next
/// message would hold the ones before it back until tokio's next read.
pub(super) const NEXT: usize = 4096 + 64;

/// A direction's reading on since tokio's last read.
#[derive(Debug)]
pub(super) struct ReadOn {
    /// What reads on may still ask for until tokio's next read.
    budget: usize,
    /// The last read began at a message boundary.
    from_boundary: bool,
    /// tokio's last read came less than [`OFTEN_MS`] after the bytes
    /// before it; `None` until [`ReadOn::gap`] is told.
    often: Option<bool>,
    /// The stream cannot be read past tokio (TLS): never again.
    unable: bool,
}

impl ReadOn {
    /// For what was read before the relay began, as for a read of tokio's
    /// at the start of a stream.
    pub(super) fn new() -> ReadOn {
        ReadOn {
            budget: BUDGET,
            from_boundary: true,
            often: None,
            unable: false,
        }
    }

    /// tokio read bytes, starting at a message boundary or inside one.
    pub(super) fn tokio_read(&mut self, from_boundary: bool) {
        self.budget = BUDGET;
        self.from_boundary = from_boundary;
        self.often = None;
    }

    /// How long the session's bytes had not moved when tokio's last read
    /// was judged, in milliseconds. Only the first call after that read
    /// counts: later judges (of reads on, of owed control messages) come
    /// right after it.
    pub(super) fn gap(&mut self, ms: u64) {
        self.often.get_or_insert(ms < OFTEN_MS);
    }

    /// Output now ends inside a message or at a boundary: is a read on
    /// worth a try before it is written? Inside a message always: output
    /// that cannot read on waits for the rest ([`ReadOn::take`] gives 0).
    pub(super) fn wanted(&self, inside_message: bool) -> bool {
        inside_message
            || (self.from_boundary
                && self.often == Some(true)
                && self.budget >= NEXT
                && !self.unable)
    }

    /// How much a read on that wants `size` bytes may ask for now (0: no
    /// read), taken from the budget.
    pub(super) fn take(&mut self, size: usize) -> usize {
        if self.unable {
            return 0;
        }
        let size = size.min(self.budget);
        self.budget -= size;
        size
    }

    /// The read on found bytes, starting where `from_boundary` says.
    pub(super) fn found(&mut self, from_boundary: bool) {
        self.from_boundary = from_boundary;
    }

    /// The read on found nothing: none until tokio's next read.
    pub(super) fn found_nothing(&mut self) {
        self.budget = 0;
    }

    /// The stream cannot be read past tokio: no read on is tried again.
    pub(super) fn cannot(&mut self) {
        self.unable = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a read of tokio's that began at a boundary, `ms` after the
    /// session's bytes last moved.
    fn read_at_boundary(ms: u64) -> ReadOn {
        let mut on = ReadOn::new();
        on.tokio_read(true);
        on.gap(ms);
        on
    }

    #[test]
    fn a_whole_message_read_at_once_is_followed_by_a_read_for_the_next() {
        let mut on = read_at_boundary(10);
        assert!(on.wanted(false), "the next message may have been released");
        assert_eq!(on.take(NEXT), NEXT);
        on.found(true);
        assert!(on.wanted(false), "and the one after it");
        assert_eq!(on.take(NEXT), NEXT);
        on.found_nothing();
        assert!(!on.wanted(false), "the socket is empty: write");
        assert_eq!(on.take(NEXT), 0);
    }

    #[test]
    fn a_message_completed_from_inside_is_written_without_another_read() {
        // A message's first chunk, then its rest.
        let mut on = read_at_boundary(0);
        assert!(on.wanted(true), "the rest of the message");
        assert_eq!(on.take(3500), 3500);
        on.found(false);
        assert!(
            !on.wanted(false),
            "the next message is not due: no recv that would find nothing"
        );
    }

    #[test]
    fn a_read_that_began_inside_a_message_reads_on_only_for_its_rest() {
        let mut on = ReadOn::new();
        on.tokio_read(false);
        on.gap(0);
        assert!(!on.wanted(false));
        assert!(on.wanted(true));
    }

    #[test]
    fn a_session_whose_bytes_came_seldom_does_not_read_on_at_boundaries() {
        let mut on = read_at_boundary(OFTEN_MS);
        assert!(!on.wanted(false), "five messages a second: nothing is held");
        assert!(on.wanted(true), "the rest of a message is still read");
        on.gap(0);
        assert!(!on.wanted(false), "only the gap of tokio's read counts");
        on.tokio_read(true);
        assert!(!on.wanted(false), "not before the new read's gap is known");
        on.gap(OFTEN_MS - 1);
        assert!(on.wanted(false), "a new read, a new gap");
        on.gap(OFTEN_MS);
        assert!(on.wanted(false), "later judges do not change it");
    }

    #[test]
    fn reads_on_ask_for_the_budget_at_most_until_tokio_reads_again() {
        let mut on = read_at_boundary(0);
        let mut asked = 0;
        while on.wanted(false) {
            let size = on.take(NEXT);
            assert_eq!(size, NEXT, "never a sliver of a next message");
            asked += size;
            on.found(true);
        }
        assert!(
            asked <= BUDGET && BUDGET - asked < NEXT,
            "a peer that keeps sending waits for tokio ({asked} asked)"
        );
        let left = BUDGET - asked;
        assert!(on.wanted(true), "output inside a message still waits");
        assert_eq!(
            on.take(16 * 1024),
            left,
            "the rest read is cut to what is left"
        );
        assert_eq!(on.take(16 * 1024), 0, "then it parks");
        on.tokio_read(false);
        assert_eq!(
            on.take(16 * 1024),
            16 * 1024,
            "tokio's next read refills it"
        );
    }

    #[test]
    fn a_stream_that_cannot_read_on_only_parks_inside_a_message() {
        let mut on = read_at_boundary(0);
        on.cannot();
        assert!(!on.wanted(false), "no read at a boundary");
        assert!(on.wanted(true), "inside a message the output still waits");
        assert_eq!(on.take(NEXT), 0);
        on.tokio_read(true);
        on.gap(0);
        assert!(!on.wanted(false), "not after tokio's next read either");
        assert_eq!(on.take(NEXT), 0);
    }

    #[test]
    fn what_was_read_before_the_relay_began_may_read_on() {
        let mut on = ReadOn::new();
        assert!(on.wanted(true));
        assert!(on.take(3500) > 0, "the rest of a message begun then");
    }
}
