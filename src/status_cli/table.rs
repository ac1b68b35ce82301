//! The text table of `maas status`.
use super::{StatusReport, VersionRow};

const HEADER: [&str; 8] = ["MODEL", "VERSION", "STATE", "PROVIDERS", "LOAD_TIME", "REQUESTS", "FAILED", "MESSAGE"];

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// One line of text from a value that may come from the server: control characters become spaces so
/// a row stays one line.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn cells(r: &VersionRow) -> [String; 8] {
    [
        one_line(&r.model),
        or_dash(r.version),
        one_line(&r.state),
        r.providers
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| if p.is_empty() { "-".into() } else { one_line(&p.join(",")) }),
        r.load_seconds.map_or_else(|| "-".to_string(), |s| format!("{s:.2}s")),
        or_dash(r.requests),
        or_dash(r.failures),
        if r.message.is_empty() { "-".into() } else { one_line(&r.message) },
    ]
}

/// The report as an aligned table (the last column, the message, is not padded).
pub fn render(report: &StatusReport) -> String {
    let rows: Vec<[String; 8]> = report.models.iter().map(cells).collect();
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(str::to_string));
    for row in &rows {
        line(row);
    }
    if report.models.is_empty() {
        out.push_str(&format!("(no models at {})\n", report.address));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let report = StatusReport {
            address: "a:1".into(),
            rest_address: "a:8501".into(),
            rest_details: false,
            models: vec![
                VersionRow {
                    model: "numbers".into(),
                    version: Some(1),
                    state: "AVAILABLE".into(),
                    requests: Some(12),
                    failures: Some(2),
                    ..Default::default()
                },
                VersionRow {
                    model: "m".into(),
                    version: Some(10),
                    state: "END".into(),
                    message: "bad\nfile".into(),
                    providers: Some(vec!["cpu".into()]),
                    load_seconds: Some(0.5),
                    ..Default::default()
                },
            ],
        };
        let t = render(&report);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "MODEL    VERSION  STATE      PROVIDERS  LOAD_TIME  REQUESTS  FAILED  MESSAGE");
        assert_eq!(lines[1], "numbers  1        AVAILABLE  -          -          12        2       -");
        assert_eq!(lines[2], "m        10       END        cpu        0.50s      -         -       bad file");
    }
}
