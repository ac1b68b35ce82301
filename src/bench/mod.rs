//! `maas bench`: the same closed-loop measurement against a running server (`load`, over gRPC) and
//! against ONNX Runtime alone in this process (`inprocess`, the limit), with the same synthesized
//! inputs and the same report, so the two can be compared side by side (`scripts/bench.sh`); and
//! `floor`, a bare tonic server answering maas's reply without doing anything, the floor under
//! maas's own cost per request.
//!
//! Both run `--warmup-seconds` first, then measure for `--seconds`: a request counts when it completes
//! inside the measured window. Latencies go into an HDR histogram (nanoseconds, 3 significant digits);
//! failures are counted over the whole run, by status code with the first message of each code.
pub mod floor;
pub mod inprocess;
pub mod load;
pub mod report;
pub mod synth;

use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Flags of `maas bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Closed-loop load against a running server: N clients over K HTTP/2 connections send TF Serving
    /// Predict or KServe v2 ModelInfer back to back.
    Load(load::LoadArgs),
    /// The limit: the same model on ONNX Runtime in this process (no network, no server), with the
    /// session options maas uses.
    Inprocess(inprocess::InprocessArgs),
    /// The floor: a bare tonic server on maas's Predict and ModelInfer paths that skips the request and
    /// answers a fixed reply (maas's answer for the model, computed once at start). Serves until
    /// SIGTERM or Ctrl-C; drive it with `load` to measure what tonic alone costs per request.
    Floor(floor::FloorArgs),
}

/// Runs the benchmark and prints its report on stdout. `Ok(true)`: every request succeeded;
/// `Ok(false)`: some failed (the report says which); `Err`: it could not run (the message says why).
pub fn run(args: BenchArgs) -> Result<bool, String> {
    let report = match args.command {
        BenchCommand::Load(a) => load::run(&a)?,
        BenchCommand::Inprocess(a) => inprocess::run(&a)?,
        BenchCommand::Floor(a) => {
            floor::run(&a)?;
            return Ok(true);
        }
    };
    report.print()?;
    Ok(report.errors == 0)
}

/// The timeline of a run: warmup from `start` to `measure_start`, then the measured window up to `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window starting now.
    pub fn new(warmup_seconds: f64, seconds: f64) -> Result<Window, String> {
        let warmup = seconds_flag("--warmup-seconds", warmup_seconds)?;
        let measured = seconds_flag("--seconds", seconds)?;
        if measured.is_zero() {
            return Err("--seconds must be more than 0".into());
        }
        let start = Instant::now();
        Ok(Window { start, measure_start: start + warmup, end: start + warmup + measured })
    }

    /// Whether a request that completed at `t` is counted.
    pub fn measures(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }

    /// Length of the measured window.
    pub fn measured(&self) -> Duration {
        self.end - self.measure_start
    }
}

fn seconds_flag(flag: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("{flag} must be a non-negative number of seconds, got {v}"))
}

/// Checks the counts every bench takes.
pub(crate) fn check_counts(concurrency: usize, rows: i64) -> Result<(), String> {
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if rows < 1 {
        return Err(format!("--rows must be at least 1, got {rows}"));
    }
    Ok(())
}

/// CPU time (user + system, every thread) a process has used so far, from `/proc/<pid>/stat`.
pub fn process_cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    cpu_time_from_stat(&text, clock_ticks_per_second()).map_err(|e| format!("{path}: {e}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn cpu_time_from_stat(stat: &str, ticks_per_second: u64) -> Result<Duration, String> {
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64, String> {
        let s = fields.get(n - 3).ok_or_else(|| format!("has no field {n}"))?;
        s.parse::<u64>().map_err(|e| format!("field {n} ({s:?}) is not a number: {e}"))
    };
    let ticks = field(14)?.saturating_add(field(15)?);
    let tps = ticks_per_second.max(1);
    Ok(Duration::from_secs(ticks / tps) + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// Context switches of a process so far, by thread id: (voluntary, involuntary), from
/// `/proc/<pid>/task/<tid>/status` (`voluntary_ctxt_switches`, `nonvoluntary_ctxt_switches`).
/// A thread that exits between listing and reading is left out.
pub fn thread_context_switches(pid: u32) -> Result<HashMap<u32, (u64, u64)>, String> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))?;
    let mut out = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {dir}: {e}"))?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let path = entry.path().join("status");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // The thread ended after the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        out.insert(tid, context_switches_from_status(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(out)
}

/// (voluntary, involuntary) context switches from a `/proc/.../status` text.
fn context_switches_from_status(status: &str) -> Result<(u64, u64), String> {
    let field = |key: &str| -> Result<u64, String> {
        let line = status.lines().find_map(|l| l.strip_prefix(key)).ok_or_else(|| format!("has no {key}"))?;
        let v = line.trim_start_matches(':').trim();
        v.parse::<u64>().map_err(|e| format!("{key} ({v:?}) is not a number: {e}"))
    };
    Ok((field("voluntary_ctxt_switches")?, field("nonvoluntary_ctxt_switches")?))
}

/// What a process used during the measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User + system CPU time of every thread.
    pub cpu: Duration,
    /// Voluntary context switches (the thread blocked: a futex, epoll, a read) of every thread.
    pub voluntary_switches: u64,
    /// Involuntary context switches (the scheduler preempted the thread) of every thread.
    pub involuntary_switches: u64,
}

/// Context switches between two per-thread snapshots: a thread that started in between counts
/// from 0, one that ended in between is left out (its last switches are lost, never negative).
fn switches_between(before: &HashMap<u32, (u64, u64)>, after: &HashMap<u32, (u64, u64)>) -> (u64, u64) {
    after.iter().fold((0, 0), |(v, n), (tid, &(va, na))| {
        let (vb, nb) = before.get(tid).copied().unwrap_or((0, 0));
        (v + va.saturating_sub(vb), n + na.saturating_sub(nb))
    })
}

/// Samples a process's CPU time and its threads' context switches at the start and at the end of
/// the measured window, on its own thread (so that a busy benchmark does not delay the samples).
/// Returns what was used in between.
pub(crate) fn sample_usage(pid: u32, window: Window) -> std::thread::JoinHandle<Result<Usage, String>> {
    std::thread::spawn(move || {
        sleep_until(window.measure_start);
        let switches_before = thread_context_switches(pid)?;
        let before = process_cpu_time(pid)?;
        sleep_until(window.end);
        let after = process_cpu_time(pid)?;
        let switches_after = thread_context_switches(pid)?;
        let (voluntary_switches, involuntary_switches) = switches_between(&switches_before, &switches_after);
        Ok(Usage { cpu: after.saturating_sub(before), voluntary_switches, involuntary_switches })
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// `path`'s extension says protobuf text format (`.pbtxt`, `.txt`, `.textproto`, `.prototxt`).
pub(crate) fn is_text_format(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
        Some("pbtxt" | "txt" | "textproto" | "prototxt")
    )
}

/// An error and its sources, e.g. `transport error: tcp connect error: Connection refused (os error 111)`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.ends_with(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "1234 (maas (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_time_from_stat(line, 100).unwrap(), Duration::from_millis(3250));
        assert_eq!(cpu_time_from_stat("1 (a) S 1", 100).unwrap_err(), "has no field 14");
        let own = process_cpu_time(std::process::id()).unwrap();
        assert!(own < Duration::from_secs(3600), "{own:?}");
    }

    #[test]
    fn parses_context_switches() {
        let status =
            "Name:\tmaas\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches_from_status(status).unwrap(), (120, 7));
        assert_eq!(context_switches_from_status("Name:\tx\n").unwrap_err(), "has no voluntary_ctxt_switches");
        let before = HashMap::from([(1, (10, 1)), (2, (5, 5))]);
        // Thread 2 ended, thread 3 started.
        let after = HashMap::from([(1, (15, 3)), (3, (4, 1))]);
        assert_eq!(switches_between(&before, &after), (9, 3));
        let own = thread_context_switches(std::process::id()).unwrap();
        assert!(own.contains_key(&std::process::id()), "{own:?}");
    }

    #[test]
    fn windows_and_formats() {
        let w = Window::new(0.5, 1.0).unwrap();
        assert!(!w.measures(w.start));
        assert!(w.measures(w.measure_start));
        assert!(!w.measures(w.end));
        assert_eq!(w.measured(), Duration::from_secs(1));
        assert_eq!(Window::new(1.0, 0.0).unwrap_err(), "--seconds must be more than 0");
        assert!(is_text_format(Path::new("r.PBTXT")));
        assert!(!is_text_format(Path::new("r.pb")));
    }
}
