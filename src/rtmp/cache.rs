//! Cache hints for the state a relay reads once a message.
//!
//! Here, at the lowest layer that has such state (a parser's and an
//! emitter's per-stream tables), so that protocol code needs nothing from
//! the rest of the crate.

/// A cache line's size on the CPUs the guard runs on.
const LINE: usize = 64;

/// How many entries of a per-stream table [`prefetch_first`] asks for. A
/// live stream's messages use a handful of chunk streams (audio, video,
/// data, commands), and a table lists them in the order they first came.
const FIRST: usize = 4;

/// Asks the CPU to start loading the memory of `items` into its cache.
/// Asked for together, the misses of several blocks overlap, instead of
/// each stalling the code that reaches it in turn. A hint only: it reads
/// nothing the program sees and never faults.
#[inline(always)]
pub fn prefetch<T>(items: &[T]) {
    for line in lines(items) {
        hint(line);
    }
}

/// [`prefetch`] for the first entries of a per-stream table ([`FIRST`]):
/// the ones a message is likely to look up.
#[inline(always)]
pub fn prefetch_first<T>(items: &[T]) {
    prefetch(items.get(..FIRST).unwrap_or(items));
}

/// The start of each cache line that `items` occupies, first to last.
#[inline(always)]
fn lines<T>(items: &[T]) -> impl Iterator<Item = *const i8> {
    let start = items.as_ptr().cast::<i8>();
    let len = std::mem::size_of_val(items);
    let first = start.wrapping_sub(start.addr() % LINE);
    let count = if len == 0 {
        0
    } else {
        (start.addr() % LINE + len).div_ceil(LINE)
    };
    (0..count).map(move |i| first.wrapping_add(i * LINE))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hint(line: *const i8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: SSE is part of every x86_64 CPU. A prefetch changes no memory
    // and no register, and is dropped for an address that is not mapped;
    // so `line` may lie outside any allocation (the start of the first
    // line may come before the slice), as Rust's own prefetch hints allow.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn hint(_line: *const i8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(64))]
    struct Lines([u8; 4 * LINE]);

    /// Which lines of `buf` a slice of `len` bytes from `offset` spans.
    fn spanned(buf: &Lines, offset: usize, len: usize) -> Vec<usize> {
        let base = buf.0.as_ptr().addr();
        lines(&buf.0[offset..offset + len])
            .map(|line| {
                let at = line.addr() - base;
                assert_eq!(at % LINE, 0, "a line's start");
                at / LINE
            })
            .collect()
    }

    #[test]
    fn every_line_a_slice_touches_and_no_other() {
        let buf = Lines([0; 4 * LINE]);
        assert_eq!(spanned(&buf, 0, 0), Vec::<usize>::new());
        assert_eq!(spanned(&buf, 5, 0), Vec::<usize>::new());
        assert_eq!(spanned(&buf, 0, 1), [0]);
        assert_eq!(spanned(&buf, 0, LINE), [0]);
        assert_eq!(spanned(&buf, 0, LINE + 1), [0, 1]);
        assert_eq!(spanned(&buf, 63, 2), [0, 1]);
        assert_eq!(spanned(&buf, 40, 100), [0, 1, 2]);
        assert_eq!(spanned(&buf, LINE, LINE), [1]);
        assert_eq!(spanned(&buf, 1, 4 * LINE - 1), [0, 1, 2, 3]);
    }

    #[test]
    fn lines_count_bytes_not_items() {
        let words = [0u64; 24];
        let base = words.as_ptr().addr();
        let span = |from: usize, to: usize| {
            let first = lines(&words[from..to]).next().map(|l| l.addr());
            (lines(&words[from..to]).count(), first)
        };
        // 8 words are a line's 64 bytes, wherever the array starts.
        let (count, first) = span(0, 8);
        assert_eq!(count, if base % LINE == 0 { 1 } else { 2 });
        assert_eq!(first, Some(base - base % LINE));
        assert_eq!(span(0, 24).0, 3 + usize::from(base % LINE != 0));
        assert_eq!(span(3, 3).0, 0);
    }

    #[test]
    fn prefetching_changes_nothing() {
        let items: Vec<u64> = (0..100).collect();
        prefetch(&items);
        prefetch(&items[..0]);
        prefetch::<u64>(&[]);
        assert_eq!(items, (0..100).collect::<Vec<u64>>());
    }
}
