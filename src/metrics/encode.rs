//! The Prometheus text exposition format (version 0.0.4), written by hand so that TF Serving's and
//! Triton's names come out exactly: `:`-mangled names, counters without `_total`, and TF Serving's
//! `le` texts. Every family is one `# TYPE` line followed by all of its samples.
use super::histogram::{fmt_value, Histogram};
use std::fmt::Write;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A label set: (name, value) pairs in output order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Builds one exposition.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    pub fn new() -> Writer {
        Writer { out: String::with_capacity(16 * 1024) }
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// Starts a family: an optional `# HELP` line (TF Serving writes none) and its `# TYPE` line.
    pub fn family(&mut self, name: &str, kind: &str, help: Option<&str>) {
        if let Some(help) = help {
            let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        }
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line with an integer value.
    pub fn int(&mut self, name: &str, labels: Labels<'_>, value: impl std::fmt::Display) {
        self.line(name, labels, None, &value.to_string());
    }

    /// One sample line with a floating point value.
    pub fn float(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.line(name, labels, None, &fmt_value(value));
    }

    /// The `_bucket` lines (cumulative, `+Inf` last), `_sum` and `_count` of a histogram.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) {
        let (cumulative, sum) = h.snapshot();
        let bucket = format!("{name}_bucket");
        for (le, count) in h.buckets().le().iter().zip(&cumulative) {
            self.line(&bucket, labels, Some(le), &count.to_string());
        }
        self.line(&format!("{name}_sum"), labels, None, &fmt_value(sum));
        let count = cumulative.last().copied().unwrap_or(0);
        self.line(&format!("{name}_count"), labels, None, &count.to_string());
    }

    fn line(&mut self, name: &str, labels: Labels<'_>, le: Option<&str>, value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
            for (i, (k, v)) in all.enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
pub fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text with `\` and newlines escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::super::histogram::{Histogram, TF_LATENCY};
    use super::*;

    #[test]
    fn lines_and_escaping() {
        let mut w = Writer::new();
        w.family(":tensorflow:serving:request_count", "counter", None);
        w.int(":tensorflow:serving:request_count", &[("model_name", "a\"b\\c\nd"), ("status", "OK")], 3);
        w.family("nv_cpu_utilization", "gauge", Some("CPU utilization rate [0.0 - 1.0]"));
        w.float("nv_cpu_utilization", &[], 0.25);
        assert_eq!(
            w.finish(),
            "# TYPE :tensorflow:serving:request_count counter\n\
             :tensorflow:serving:request_count{model_name=\"a\\\"b\\\\c\\nd\",status=\"OK\"} 3\n\
             # HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]\n\
             # TYPE nv_cpu_utilization gauge\n\
             nv_cpu_utilization 0.25\n"
        );
    }

    #[test]
    fn histogram_lines() {
        let h = Histogram::new(&TF_LATENCY);
        h.observe_ns(250_000_000_000); // 2.5e8 µs: the le="2.52873e+08" bucket
        h.observe_ns(5_000);
        let mut w = Writer::new();
        w.histogram("x", &[("m", "a")], &h);
        let text = w.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 36);
        assert_eq!(lines[0], "x_bucket{m=\"a\",le=\"10\"} 1");
        assert_eq!(lines[28], "x_bucket{m=\"a\",le=\"1.40485e+08\"} 1");
        assert_eq!(lines[29], "x_bucket{m=\"a\",le=\"2.52873e+08\"} 2");
        assert_eq!(lines[33], "x_bucket{m=\"a\",le=\"+Inf\"} 2");
        assert_eq!(lines[34], "x_sum{m=\"a\"} 250000005");
        assert_eq!(lines[35], "x_count{m=\"a\"} 2");
    }
}
