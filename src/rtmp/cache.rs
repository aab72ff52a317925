//! Cache hints for the state a relay reads once a message.
//!
//! Here, at the lowest layer that has such state (a parser's and an
//! emitter's per-stream tables), so that protocol code needs nothing from
//! the rest of the crate.

/// A cache line's size on the CPUs the guard runs on.
const LINE: usize = 64;

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
    // and no register, and is dropped for an address that is not mapped.
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
        assert_eq!(spanned(&buf, 0, 1), [0]);
        assert_eq!(spanned(&buf, 0, LINE), [0]);
        assert_eq!(spanned(&buf, 0, LINE + 1), [0, 1]);
        assert_eq!(spanned(&buf, 63, 2), [0, 1]);
        assert_eq!(spanned(&buf, 40, 100), [0, 1, 2]);
        assert_eq!(spanned(&buf, LINE, LINE), [1]);
        assert_eq!(spanned(&buf, 1, 4 * LINE - 1), [0, 1, 2, 3]);
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
