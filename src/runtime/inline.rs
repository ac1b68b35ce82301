//! Inline execution: a short run goes on the I/O thread that decoded the request, with no hand-off
//! to a blocking thread and back (two thread switches, their futex calls and context switches cost
//! more than a small model's whole run).
//!
//! Which runs are short is measured, per version: every run (warmup included) is timed from the
//! first input conversion to the last output copied, and counted in a window (the first window is
//! [`FIRST_WINDOW`] runs, later ones [`WINDOW`]). At the end of a window the version is eligible when
//! at most one run in [`WINDOW`] (about the 99th percentile) took longer than the threshold
//! (`inline_max_run_micros`, default [`DEFAULT_MAX_RUN`]); one inline run four times over the
//! threshold ends eligibility at once. A request is sized by its input bytes: it runs inline only
//! when it is no larger than the largest request measured short, so a model that is fast for one
//! row but slow for 10,000 sends the large request the blocking way. Runs on the blocking path are
//! measured too, so a version can become eligible (or learn larger sizes) as it serves.
//!
//! `inline_execution: always` skips the measurement (inline whenever a session is free at once);
//! `never` keeps every run on a blocking thread. Batched versions always use the batcher.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The default threshold: a version whose runs take longer than this (at its 99th percentile) runs
/// on blocking threads.
pub const DEFAULT_MAX_RUN: Duration = Duration::from_micros(50);
/// Runs in the first measurement window (a decision comes soon after load).
pub const FIRST_WINDOW: u32 = 16;
/// Runs in every later window.
pub const WINDOW: u32 = 128;

/// `inline_execution` in `maas.pbtxt` (and `--inline-execution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InlineMode {
    /// Inline when measured short (the default).
    #[default]
    Auto,
    /// Inline whenever a session is free at once.
    Always,
    /// Never inline: every run on a blocking thread.
    Never,
}

impl InlineMode {
    pub fn parse(s: &str) -> Result<InlineMode, String> {
        match s {
            "auto" => Ok(InlineMode::Auto),
            "always" => Ok(InlineMode::Always),
            "never" => Ok(InlineMode::Never),
            other => Err(format!("inline_execution must be one of auto, always, never; got \"{other}\"")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InlineMode::Auto => "auto",
            InlineMode::Always => "always",
            InlineMode::Never => "never",
        }
    }
}

/// The inline settings of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineSettings {
    pub mode: InlineMode,
    /// Runs longer than this are not short.
    pub max_run: Duration,
}

impl Default for InlineSettings {
    fn default() -> Self {
        InlineSettings { mode: InlineMode::Auto, max_run: DEFAULT_MAX_RUN }
    }
}

/// The measurement and the decision of one version. Lock-free: relaxed atomics (a lost update
/// only shifts a window boundary by a run).
#[derive(Debug)]
pub struct Inline {
    settings: InlineSettings,
    max_run_ns: u64,
    eligible: AtomicBool,
    /// Windows completed (the first one is shorter).
    windows: AtomicU32,
    window_runs: AtomicU32,
    window_slow: AtomicU32,
    /// The largest request (input bytes) whose run was short.
    largest_short: AtomicU64,
    pub inline_runs: AtomicU64,
    pub blocking_runs: AtomicU64,
    /// Requests sent the blocking way because they were larger than any measured short.
    pub too_large: AtomicU64,
}

/// What the status route shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineSnapshot {
    pub mode: InlineMode,
    pub max_run: Duration,
    pub eligible: bool,
    pub largest_short_bytes: u64,
    pub inline_runs: u64,
    pub blocking_runs: u64,
    pub too_large: u64,
}

impl Inline {
    pub fn new(settings: InlineSettings) -> Inline {
        Inline {
            settings,
            max_run_ns: u64::try_from(settings.max_run.as_nanos()).unwrap_or(u64::MAX),
            eligible: AtomicBool::new(false),
            windows: AtomicU32::new(0),
            window_runs: AtomicU32::new(0),
            window_slow: AtomicU32::new(0),
            largest_short: AtomicU64::new(0),
            inline_runs: AtomicU64::new(0),
            blocking_runs: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
        }
    }

    /// Whether a request of `bytes` input bytes should try to run inline (if a session is free).
    pub fn wants(&self, bytes: u64) -> bool {
        match self.settings.mode {
            InlineMode::Never => false,
            InlineMode::Always => true,
            InlineMode::Auto => {
                if !self.eligible.load(Relaxed) {
                    return false;
                }
                if bytes > self.largest_short.load(Relaxed) {
                    self.too_large.fetch_add(1, Relaxed);
                    return false;
                }
                true
            }
        }
    }

    /// Records one run of a request of `bytes` input bytes that took `took`, and whether it ran inline.
    pub fn record(&self, bytes: u64, took: Duration, inline: bool) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let slow = ns > self.max_run_ns;
        if inline {
            self.inline_runs.fetch_add(1, Relaxed);
            if ns / 4 > self.max_run_ns {
                // Far over: stop at once, start a new window.
                self.eligible.store(false, Relaxed);
                self.window_runs.store(0, Relaxed);
                self.window_slow.store(0, Relaxed);
                return;
            }
        }
        if !slow {
            self.largest_short.fetch_max(bytes, Relaxed);
        }
        if self.settings.mode != InlineMode::Auto {
            return;
        }
        let slow_so_far =
            if slow { self.window_slow.fetch_add(1, Relaxed) + 1 } else { self.window_slow.load(Relaxed) };
        let runs = self.window_runs.fetch_add(1, Relaxed) + 1;
        let size = if self.windows.load(Relaxed) == 0 { FIRST_WINDOW } else { WINDOW };
        if runs >= size {
            // At most one slow run in WINDOW (none in the shorter first window).
            let allowed = size / WINDOW;
            self.eligible.store(slow_so_far <= allowed, Relaxed);
            self.window_runs.store(0, Relaxed);
            self.window_slow.store(0, Relaxed);
            self.windows.fetch_add(1, Relaxed);
        }
    }

    /// Counts a run that went the blocking way.
    pub fn blocked(&self) {
        self.blocking_runs.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> InlineSnapshot {
        InlineSnapshot {
            mode: self.settings.mode,
            max_run: self.settings.max_run,
            eligible: match self.settings.mode {
                InlineMode::Auto => self.eligible.load(Relaxed),
                InlineMode::Always => true,
                InlineMode::Never => false,
            },
            largest_short_bytes: self.largest_short.load(Relaxed),
            inline_runs: self.inline_runs.load(Relaxed),
            blocking_runs: self.blocking_runs.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(10);
    const LONG: Duration = Duration::from_micros(100);

    #[test]
    fn eligible_after_a_short_first_window_and_sized_by_the_largest_short_request() {
        let i = Inline::new(InlineSettings::default());
        assert!(!i.wants(8));
        for _ in 0..FIRST_WINDOW - 1 {
            i.record(32, SHORT, false);
        }
        assert!(!i.wants(8), "no decision before the window ends");
        i.record(64, SHORT, false);
        assert!(i.wants(64));
        assert!(!i.wants(65), "larger than any request measured short");
        assert_eq!(i.snapshot().too_large, 1);
        // A large request measured short on the blocking path widens the bound.
        i.record(4096, SHORT, false);
        assert!(i.wants(4096));
    }

    #[test]
    fn slow_runs_end_eligibility() {
        let i = Inline::new(InlineSettings::default());
        for _ in 0..FIRST_WINDOW {
            i.record(8, SHORT, false);
        }
        assert!(i.wants(8));
        // Two slow runs in a window of 128: not short at the 99th percentile.
        for n in 0..WINDOW {
            i.record(8, if n < 2 { LONG } else { SHORT }, true);
        }
        assert!(!i.wants(8));
        // One in 128 is fine.
        for n in 0..WINDOW {
            i.record(8, if n < 1 { LONG } else { SHORT }, false);
        }
        assert!(i.wants(8));
        // One inline run far over the threshold stops it at once.
        i.record(8, Duration::from_millis(1), true);
        assert!(!i.wants(8));
        // A first window with one slow run does not qualify.
        let j = Inline::new(InlineSettings::default());
        for n in 0..FIRST_WINDOW {
            j.record(8, if n == 0 { LONG } else { SHORT }, false);
        }
        assert!(!j.wants(8));
    }

    #[test]
    fn modes() {
        let always = Inline::new(InlineSettings { mode: InlineMode::Always, max_run: DEFAULT_MAX_RUN });
        assert!(always.wants(u64::MAX));
        let never = Inline::new(InlineSettings { mode: InlineMode::Never, max_run: DEFAULT_MAX_RUN });
        for _ in 0..FIRST_WINDOW {
            never.record(8, SHORT, false);
        }
        assert!(!never.wants(8));
        assert_eq!(InlineMode::parse("never"), Ok(InlineMode::Never));
        assert_eq!(
            InlineMode::parse("on").unwrap_err(),
            "inline_execution must be one of auto, always, never; got \"on\""
        );
    }
}
