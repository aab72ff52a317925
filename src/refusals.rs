//! The recent history of refusals: how many sessions were refused for each
//! [`Reason`] in each 10-second step of the last hour, for the status page
//! and `GET /api/v1/refusals`.
//!
//! Prometheus keeps the long history (`rtmp_guard_blocked_sessions_total`);
//! this ring answers "what is being refused right now" without one. It
//! counts what that counter counts (enforced refusals; dry run's would-be
//! refusals are not in it), from the same call in `report.rs`.
//!
//! Steps are aligned to Unix time (a step is `[10k, 10k + 10)` seconds),
//! and the ring holds [`STEPS`] of them, so its size is fixed: 360 steps of
//! 30 counters, 43 KiB. Time is passed in (Unix seconds), never read here,
//! so the ring is tested without a clock. A step is cleared when the ring
//! comes round to it again, so a quiet hour costs nothing and a gap reads
//! as zeros.

use std::sync::Mutex;
use std::time::Duration;

use crate::verdict::Reason;

/// Seconds per step.
pub const STEP_SECONDS: u64 = 10;

/// Steps kept: one hour.
pub const STEPS: usize = 360;

/// The longest window that can be asked for.
pub const MAX_WINDOW: Duration = Duration::from_secs(STEP_SECONDS * STEPS as u64);

/// The window the status page shows, and the API's default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);

const REASONS: usize = Reason::ALL.len();

/// One step: which one (Unix seconds / [`STEP_SECONDS`]) and its counts,
/// in the order of [`Reason::ALL`].
#[derive(Clone, Copy)]
struct Step {
    number: u64,
    counts: [u32; REASONS],
}

/// Per-reason counts per 10 s, for the last [`STEPS`] steps.
pub struct RefusalHistory {
    steps: Mutex<Box<[Step; STEPS]>>,
}

impl Default for RefusalHistory {
    fn default() -> Self {
        let empty = Step {
            number: u64::MAX,
            counts: [0; REASONS],
        };
        RefusalHistory {
            steps: Mutex::new(Box::new([empty; STEPS])),
        }
    }
}

/// Counts over a window, oldest step first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Unix time at which the last step ends. The last step is the one
    /// `now` falls in, still filling.
    pub end: u64,
    /// Every reason of [`Reason::ALL`], in that order, with one count per
    /// step.
    pub reasons: Vec<(Reason, Vec<u32>)>,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window must be a duration like \"15m\" or \"1h\": {0}")]
    Unreadable(String),
    #[error(
        "window must be a whole number of {STEP_SECONDS}-second steps, from {STEP_SECONDS}s to 1h"
    )]
    OutOfRange,
}

/// Reads a window (`"15m"`, `"90s"`, `"1h"`): a whole number of steps,
/// from one step to [`MAX_WINDOW`]. Returns the number of steps.
pub fn parse_window(text: &str) -> Result<usize, WindowError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| WindowError::Unreadable(e.to_string()))?;
    let whole = d.subsec_nanos() == 0 && d.as_secs() % STEP_SECONDS == 0;
    if !whole || d.is_zero() || d > MAX_WINDOW {
        return Err(WindowError::OutOfRange);
    }
    Ok((d.as_secs() / STEP_SECONDS) as usize)
}

impl RefusalHistory {
    /// Counts one refusal for `reason` at `now` (Unix seconds).
    pub fn record(&self, reason: Reason, now: u64) {
        let number = now / STEP_SECONDS;
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let step = &mut steps[(number % STEPS as u64) as usize];
        if step.number != number {
            // A later step takes the slot over; a late record of a step
            // already overwritten (a clock stepped back) is dropped.
            if step.number != u64::MAX && step.number > number {
                return;
            }
            *step = Step {
                number,
                counts: [0; REASONS],
            };
        }
        let i = index(reason);
        step.counts[i] = step.counts[i].saturating_add(1);
    }

    /// The last `steps` steps up to the one `now` falls in (capped at
    /// [`STEPS`]), oldest first.
    pub fn window(&self, steps: usize, now: u64) -> Window {
        let steps = steps.clamp(1, STEPS);
        let last = now / STEP_SECONDS;
        let mut reasons: Vec<(Reason, Vec<u32>)> = Reason::ALL
            .iter()
            .map(|r| (*r, Vec::with_capacity(steps)))
            .collect();
        let ring = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        for back in (0..steps as u64).rev() {
            let number = last.checked_sub(back);
            let step = number
                .map(|n| &ring[(n % STEPS as u64) as usize])
                .filter(|s| Some(s.number) == number);
            for (i, (_, counts)) in reasons.iter_mut().enumerate() {
                counts.push(step.map_or(0, |s| s.counts[i]));
            }
        }
        Window {
            end: (last + 1) * STEP_SECONDS,
            reasons,
        }
    }
}

/// `reason`'s place in [`Reason::ALL`].
fn index(reason: Reason) -> usize {
    Reason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(w: &Window, reason: Reason) -> Vec<u32> {
        w.reasons
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c.clone())
            .unwrap()
    }

    #[test]
    fn refusals_land_in_their_ten_second_step_oldest_first() {
        let h = RefusalHistory::default();
        let t = 1_700_000_000; // a multiple of 10
        h.record(Reason::UnknownApp, t);
        h.record(Reason::UnknownApp, t + 9);
        h.record(Reason::UnknownApp, t + 10);
        h.record(Reason::Banned, t + 25);
        let w = h.window(3, t + 29);
        assert_eq!(w.end, t + 30);
        assert_eq!(counts(&w, Reason::UnknownApp), [2, 1, 0]);
        assert_eq!(counts(&w, Reason::Banned), [0, 0, 1]);
        assert_eq!(counts(&w, Reason::NotRtmp), [0, 0, 0]);
        assert_eq!(w.reasons.len(), Reason::ALL.len());
        assert!(w.reasons.iter().all(|(_, c)| c.len() == 3));
    }

    #[test]
    fn a_step_older_than_the_ring_reads_as_zero_and_its_slot_is_reused() {
        let h = RefusalHistory::default();
        let t = 1_700_000_000;
        h.record(Reason::RateLimited, t);
        // One full turn later the same slot holds a new step.
        let later = t + STEP_SECONDS * STEPS as u64;
        let w = h.window(STEPS, later);
        assert_eq!(counts(&w, Reason::RateLimited).iter().sum::<u32>(), 0);
        h.record(Reason::RateLimited, later);
        let w = h.window(STEPS, later);
        assert_eq!(counts(&w, Reason::RateLimited).last(), Some(&1));
        assert_eq!(counts(&w, Reason::RateLimited).iter().sum::<u32>(), 1);
        // A record for the step it replaced comes too late and is dropped.
        h.record(Reason::RateLimited, t);
        assert_eq!(
            counts(&h.window(STEPS, later), Reason::RateLimited)
                .iter()
                .sum::<u32>(),
            1
        );
    }

    #[test]
    fn a_quiet_gap_reads_as_zeros_and_the_window_is_capped_at_an_hour() {
        let h = RefusalHistory::default();
        let t = 1_700_000_000;
        h.record(Reason::CommandFlood, t);
        h.record(Reason::CommandFlood, t + 600);
        let w = h.window(90, t + 600);
        let c = counts(&w, Reason::CommandFlood);
        assert_eq!(c.len(), 90);
        assert_eq!(c[89], 1);
        assert_eq!(c[89 - 60], 1);
        assert_eq!(c.iter().sum::<u32>(), 2);
        assert_eq!(h.window(10_000, t).reasons[0].1.len(), STEPS);
        // Near the epoch there are fewer steps behind: zeros, no panic.
        assert_eq!(h.window(5, 15).reasons[0].1, [0, 0, 0, 0, 0]);
    }

    #[test]
    fn windows_are_whole_steps_up_to_an_hour() {
        assert_eq!(parse_window("15m"), Ok(90));
        assert_eq!(parse_window("10s"), Ok(1));
        assert_eq!(parse_window("1h"), Ok(STEPS));
        assert_eq!(parse_window("90s"), Ok(9));
        assert_eq!(parse_window("5s"), Err(WindowError::OutOfRange));
        assert_eq!(parse_window("15s"), Err(WindowError::OutOfRange));
        assert_eq!(parse_window("0s"), Err(WindowError::OutOfRange));
        assert_eq!(parse_window("2h"), Err(WindowError::OutOfRange));
        assert_eq!(parse_window("1500ms"), Err(WindowError::OutOfRange));
        for bad in ["", "15", "fifteen minutes", "-15m", "15 parsecs"] {
            assert!(
                matches!(parse_window(bad), Err(WindowError::Unreadable(_))),
                "{bad:?}"
            );
        }
    }
}
