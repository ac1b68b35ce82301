//! What a benchmark measured: per-worker recorders, merged into one [`Report`], printed as text or
//! JSON (`--json`, one object on stdout).
use super::Usage;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies and failures seen by one worker (a client task or a driver thread).
pub struct Recorder {
    /// Latencies of the requests completed in the measured window, in nanoseconds.
    hist: Histogram<u64>,
    /// Failures over the whole run, by code: (count, first message).
    errors: BTreeMap<String, (u64, String)>,
}

impl Recorder {
    pub fn new() -> Result<Recorder, String> {
        // 1 ns to 1 hour, 3 significant digits.
        let hist = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .map_err(|e| format!("internal error: cannot create a latency histogram: {e}"))?;
        Ok(Recorder { hist, errors: BTreeMap::new() })
    }

    /// A request that succeeded inside the measured window.
    pub fn success(&mut self, latency: Duration) {
        self.hist.saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1));
    }

    /// A request that failed (at any time); `message` is only built for the first of each code.
    pub fn error(&mut self, code: &str, message: impl FnOnce() -> String) {
        match self.errors.get_mut(code) {
            Some((count, _)) => *count += 1,
            None => {
                self.errors.insert(code.to_string(), (1, message()));
            }
        }
    }

    /// Adds another worker's recordings (the first message of each code is kept).
    pub fn merge(&mut self, other: Recorder) -> Result<(), String> {
        self.hist.add(&other.hist).map_err(|e| format!("internal error: cannot merge latency histograms: {e:?}"))?;
        for (code, (count, message)) in other.errors {
            self.errors.entry(code).and_modify(|e| e.0 += count).or_insert((count, message));
        }
        Ok(())
    }

    pub fn requests(&self) -> u64 {
        self.hist.len()
    }

    pub fn latency(&self) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.hist.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: us(self.hist.value_at_quantile(0.50)),
            p90: us(self.hist.value_at_quantile(0.90)),
            p99: us(self.hist.value_at_quantile(0.99)),
            max: us(self.hist.max()),
            mean: self.hist.mean() / 1000.0,
        }
    }

    pub fn error_counts(&self) -> Vec<ErrorCount> {
        self.errors
            .iter()
            .map(|(code, (count, message))| ErrorCount {
                code: code.clone(),
                count: *count,
                first_message: message.clone(),
            })
            .collect()
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Failures of one code.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCount {
    /// gRPC status code (`NOT_FOUND`, ...) for `load`, ONNX Runtime error code for `inprocess`.
    pub code: String,
    pub count: u64,
    pub first_message: String,
}

/// CPU time and context switches of a process during the measured window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cpu {
    /// `server` (`load --server-pid`) or `self` (`inprocess`).
    pub process: &'static str,
    pub pid: u32,
    /// User + system CPU seconds of every thread, from `/proc/<pid>/stat` (clock-tick resolution).
    pub cpu_seconds: f64,
    /// CPU time per measured request in microseconds (absent when no request completed).
    pub cpu_us_per_request: Option<f64>,
    /// CPU seconds per wall-clock second (1.0 = one core busy all the time).
    pub utilization: f64,
    /// Voluntary context switches of every thread (`/proc/<pid>/task/*/status`
    /// `voluntary_ctxt_switches`: the thread blocked, e.g. on a futex or in epoll_wait).
    pub voluntary_context_switches: u64,
    /// Involuntary ones (`nonvoluntary_ctxt_switches`: the scheduler preempted the thread).
    pub involuntary_context_switches: u64,
    /// Both kinds per measured request (absent when no request completed). Threads that ended during
    /// the window are not counted.
    pub context_switches_per_request: Option<f64>,
}

impl Cpu {
    pub fn new(process: &'static str, pid: u32, used: Usage, requests: u64, window: Duration) -> Cpu {
        let cpu_seconds = used.cpu.as_secs_f64();
        let switches = used.voluntary_switches + used.involuntary_switches;
        Cpu {
            process,
            pid,
            cpu_seconds,
            cpu_us_per_request: (requests > 0).then(|| cpu_seconds * 1e6 / requests as f64),
            utilization: cpu_seconds / window.as_secs_f64().max(1e-9),
            voluntary_context_switches: used.voluntary_switches,
            involuntary_context_switches: used.involuntary_switches,
            context_switches_per_request: (requests > 0).then(|| switches as f64 / requests as f64),
        }
    }
}

/// The result of one benchmark run (what `--json` prints).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// `load` or `inprocess`.
    pub bench: &'static str,
    pub model: String,
    /// The server address (`load`) or the model file (`inprocess`).
    pub target: String,
    /// `tf` or `v2` (`load` only).
    pub protocol: Option<&'static str>,
    pub concurrency: usize,
    /// HTTP/2 connections (`load` only).
    pub connections: Option<usize>,
    /// ONNX Runtime sessions (`inprocess` only).
    pub sessions: Option<usize>,
    /// Value of a dynamic first dimension (absent with `--request-file`).
    pub rows: Option<i64>,
    /// Inputs sent: `name dtype [shape]`.
    pub inputs: Vec<String>,
    pub warmup_seconds: f64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Requests that succeeded inside the measured window.
    pub requests: u64,
    pub requests_per_second: f64,
    pub latency_us: Latency,
    /// Requests that failed, over the whole run (warmup included).
    pub errors: u64,
    pub errors_by_code: Vec<ErrorCount>,
    pub cpu: Option<Cpu>,
    /// Set with `--json`: print JSON instead of text.
    #[serde(skip)]
    pub json: bool,
}

impl Report {
    /// Prints the report on stdout.
    pub fn print(&self) -> Result<(), String> {
        if self.json {
            let s = serde_json::to_string_pretty(self).map_err(|e| format!("cannot write the report as JSON: {e}"))?;
            println!("{s}");
        } else {
            print!("{}", self.text());
        }
        Ok(())
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let how = match (self.bench, self.protocol) {
            ("load", Some(p)) => format!("{p} over {} connection(s) to {}", self.connections.unwrap_or(1), self.target),
            _ => format!("in-process ONNX Runtime, {} session(s), {}", self.sessions.unwrap_or(1), self.target),
        };
        let _ = writeln!(s, "maas bench {}: model {} ({how})", self.bench, self.model);
        let _ = writeln!(s, "  inputs        {}", self.inputs.join(", "));
        let _ = writeln!(
            s,
            "  concurrency   {}; measured {:.1} s after {:.1} s warmup",
            self.concurrency, self.seconds, self.warmup_seconds
        );
        let _ = writeln!(s, "  requests      {}", self.requests);
        let _ = writeln!(s, "  requests/s    {:.1}", self.requests_per_second);
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  mean {:.1}",
            l.p50, l.p90, l.p99, l.max, l.mean
        );
        let _ = writeln!(s, "  errors        {}", self.errors);
        for e in &self.errors_by_code {
            let _ = writeln!(s, "    {} x {}: {}", e.code, e.count, e.first_message);
        }
        if let Some(c) = &self.cpu {
            let per = c.cpu_us_per_request.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
            let label = format!("{} CPU", c.process);
            let _ = writeln!(
                s,
                "  {label:<13} {per} us/request ({:.3} s CPU, {:.0}% of one core; pid {})",
                c.cpu_seconds,
                c.utilization * 100.0,
                c.pid
            );
            let per = c.context_switches_per_request.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                s,
                "  ctx switches  {per} per request ({} voluntary, {} involuntary)",
                c.voluntary_context_switches, c.involuntary_context_switches
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_reports() {
        let mut a = Recorder::new().unwrap();
        let mut b = Recorder::new().unwrap();
        for us in 1..=100u64 {
            a.success(Duration::from_micros(us));
        }
        b.success(Duration::from_millis(5));
        a.error("NOT_FOUND", || "first".into());
        b.error("NOT_FOUND", || "second".into());
        b.error("INTERNAL", || "boom".into());
        a.merge(b).unwrap();
        assert_eq!(a.requests(), 101);
        let l = a.latency();
        assert!((l.p50 - 51.0).abs() < 0.1, "{l:?}");
        assert!((l.max - 5000.0).abs() < 5.0, "{l:?}");
        assert_eq!(
            a.error_counts(),
            vec![
                ErrorCount { code: "INTERNAL".into(), count: 1, first_message: "boom".into() },
                ErrorCount { code: "NOT_FOUND".into(), count: 2, first_message: "first".into() },
            ]
        );
        let used = Usage { cpu: Duration::from_millis(500), voluntary_switches: 3000, involuntary_switches: 500 };
        let cpu = Cpu::new("server", 7, used, 1000, Duration::from_secs(1));
        assert_eq!(cpu.cpu_us_per_request, Some(500.0));
        assert!((cpu.utilization - 0.5).abs() < 1e-9);
        assert_eq!(cpu.context_switches_per_request, Some(3.5));
        assert_eq!((cpu.voluntary_context_switches, cpu.involuntary_context_switches), (3000, 500));
        let report = Report {
            bench: "load",
            model: "m".into(),
            target: "127.0.0.1:1".into(),
            protocol: Some("tf"),
            concurrency: 1,
            connections: Some(1),
            sessions: None,
            rows: Some(1),
            inputs: vec![],
            warmup_seconds: 0.0,
            seconds: 1.0,
            requests: 1000,
            requests_per_second: 1000.0,
            latency_us: Latency::default(),
            errors: 0,
            errors_by_code: vec![],
            cpu: Some(cpu),
            json: false,
        };
        let text = report.text();
        assert!(text.contains("  server CPU    500.0 us/request (0.500 s CPU, 50% of one core; pid 7)\n"), "{text}");
        assert!(text.contains("  ctx switches  3.50 per request (3000 voluntary, 500 involuntary)\n"), "{text}");
        let none = Cpu::new("self", 7, Usage::default(), 0, Duration::from_secs(1));
        assert_eq!((none.cpu_us_per_request, none.context_switches_per_request), (None, None));
    }
}
