//! Rate limiting of repeated log lines: the first occurrence of a line is shown, the
//! same line again within the window is counted instead, and the next occurrence after
//! the window is shown with that count. librdkafka repeats a failing connection's
//! errors every few tens of milliseconds while a broker is unreachable.
//!
//! Pure: the caller passes the time, so tests drive a fake clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// At most this many distinct lines are tracked; beyond, lines whose window is over are
/// forgotten, and if that is not enough a new line is shown untracked.
const MAX_TRACKED: usize = 256;

#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug)]
struct Seen {
    shown_at: Instant,
    suppressed: u64,
}

/// What to do with one occurrence of a line.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Show it; `suppressed` identical lines were held back since it was last shown.
    Show { suppressed: u64 },
    /// Shown less than a window ago: hold it back (it is counted).
    Suppress,
}

impl LogLimiter {
    pub(crate) fn new(window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Decides about one occurrence of the line identified by `key`, at `now`.
    pub(crate) fn check(&self, key: &str, now: Instant) -> Verdict {
        let mut seen = lock(&self.seen);
        if let Some(s) = seen.get_mut(key) {
            if now.saturating_duration_since(s.shown_at) < self.window {
                s.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut s.suppressed);
            s.shown_at = now;
            return Verdict::Show { suppressed };
        }
        if seen.len() >= MAX_TRACKED {
            let window = self.window;
            seen.retain(|_, s| now.saturating_duration_since(s.shown_at) < window);
        }
        if seen.len() < MAX_TRACKED {
            seen.insert(
                key.to_owned(),
                Seen {
                    shown_at: now,
                    suppressed: 0,
                },
            );
        }
        Verdict::Show { suppressed: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn a_flood_shows_the_first_line_then_one_summary_per_window() {
        let limiter = LogLimiter::new(WINDOW);
        let t0 = Instant::now();
        let mut shown = Vec::new();
        // Twice every 50 ms for 95 s, as librdkafka did with an unreachable broker.
        for tick in 0..1900u32 {
            let now = t0 + Duration::from_millis(50) * tick;
            for _ in 0..2 {
                if let Verdict::Show { suppressed } = limiter.check("AllBrokersDown", now) {
                    shown.push((now - t0, suppressed));
                }
            }
        }
        assert_eq!(
            shown,
            [
                (Duration::ZERO, 0),
                (Duration::from_secs(30), 1199),
                (Duration::from_secs(60), 1199),
                (Duration::from_secs(90), 1199),
            ]
        );
    }

    #[test]
    fn distinct_lines_are_limited_separately() {
        let limiter = LogLimiter::new(WINDOW);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", t0), Verdict::Show { suppressed: 0 });
        assert_eq!(limiter.check("b", t0), Verdict::Show { suppressed: 0 });
        assert_eq!(limiter.check("a", t0), Verdict::Suppress);
        assert_eq!(
            limiter.check("b", t0 + WINDOW),
            Verdict::Show { suppressed: 0 },
            "b repeated only after the window: nothing was held back"
        );
    }

    #[test]
    fn tracking_stays_bounded_and_new_lines_are_still_shown() {
        let limiter = LogLimiter::new(WINDOW);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            limiter.check(&format!("line {i}"), t0);
        }
        assert_eq!(
            limiter.check("one too many", t0),
            Verdict::Show { suppressed: 0 }
        );
        assert_eq!(
            limiter.check("one too many", t0),
            Verdict::Show { suppressed: 0 },
            "untracked while the table is full of live lines"
        );
        // Once the old lines' window is over they make room.
        let later = t0 + WINDOW;
        assert_eq!(
            limiter.check("one too many", later),
            Verdict::Show { suppressed: 0 }
        );
        assert_eq!(limiter.check("one too many", later), Verdict::Suppress);
        assert!(lock(&limiter.seen).len() <= MAX_TRACKED);
    }
}
