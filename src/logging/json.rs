//! `--log-format json`: one JSON object per line,
//! `{"timestamp": RFC 3339 UTC, "level", "target", "message", ...fields}`, where the fields are the
//! event's and those of every span it is in (e.g. the request span's `request_id`, `trace_id`,
//! `span_id`), all at the top level so that `jq .request_id` finds them. An event's own field wins
//! over a span's of the same name; `timestamp`, `level`, `target` and `message` are never overwritten
//! (a field with one of these names is written as `field.<name>`).
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

const RESERVED: [&str; 4] = ["timestamp", "level", "target", "message"];

/// Collects fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, v: Value) {
        let name = field.name();
        // tracing's `log` compatibility fields are not the event's own.
        if name.starts_with("log.") {
            return;
        }
        self.0.insert(name.to_string(), v);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// Span fields, stored in each span's extensions as a JSON object (`FormattedFields<JsonSpanFields>`).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut map = Map::new();
        fields.record(&mut JsonVisitor(&mut map));
        write!(writer, "{}", Value::Object(map))
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let mut map = match serde_json::from_str::<Value>(&current.fields) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        fields.record(&mut JsonVisitor(&mut map));
        current.fields = Value::Object(map).to_string();
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = fmt::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `,"<key>":` (a reserved key becomes `field.<key>`).
fn push_key(out: &mut String, key: &str) {
    out.push(',');
    if RESERVED.contains(&key) {
        push_json_str(out, &format!("field.{key}"));
    } else {
        push_json_str(out, key);
    }
    out.push(':');
}

/// Writes an event's fields straight into the line (`,"name":value` each), the message apart.
struct EventWriter<'a> {
    out: &'a mut String,
    message: Option<String>,
    names: Vec<&'static str>,
}

impl EventWriter<'_> {
    /// Starts the field; false for the message (kept apart) and `log.*` compatibility fields.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") {
            return false;
        }
        push_key(self.out, name);
        self.names.push(name);
        true
    }
}

impl Visit for EventWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = fmt::Write::write_fmt(self.out, format_args!("{value}"));
            } else {
                push_json_str(self.out, &value.to_string());
            }
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = fmt::Write::write_fmt(self.out, format_args!("{value}"));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = fmt::Write::write_fmt(self.out, format_args!("{value}"));
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else if self.key(field) {
            push_json_str(self.out, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// The event formatter of `--log-format json`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = String::with_capacity(256);
        let mut ev = EventWriter { out: &mut fields, message: None, names: Vec::with_capacity(16) };
        event.record(&mut ev);
        let (message, names) = (ev.message.unwrap_or_default(), ev.names);

        let mut line = String::with_capacity(fields.len() + 256);
        line.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut line))?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push_str("\",\"target\":");
        push_json_str(&mut line, meta.target());
        line.push_str(",\"message\":");
        push_json_str(&mut line, &message);
        // Span fields, innermost first; a name already written (by the event or an inner span) is
        // skipped.
        let mut written: Vec<String> = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                let Some(f) = ext.get::<FormattedFields<N>>() else { continue };
                if f.fields.len() <= 2 {
                    continue;
                }
                let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&f.fields) else { continue };
                for (k, v) in m {
                    if names.contains(&k.as_str()) || written.contains(&k) {
                        continue;
                    }
                    push_key(&mut line, &k);
                    let _ = fmt::Write::write_fmt(&mut line, format_args!("{v}"));
                    written.push(k);
                }
            }
        }
        line.push_str(&fields);
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_json_with_span_fields_at_the_top() {
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "abc", trace_id = tracing::field::Empty);
            span.record("trace_id", "t1");
            let _g = span.enter();
            tracing::warn!(
                model = "m",
                rows = 3u64,
                ok = true,
                level = "x",
                ratio = 0.25,
                esc = "\u{1b}[31m\\ é",
                "quote \" and\nnewline {}",
                1
            );
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].starts_with("{\"timestamp\":"), "{out}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "quote \" and\nnewline 1");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["trace_id"], "t1");
        assert_eq!(v["model"], "m");
        assert_eq!(v["rows"], 3);
        assert_eq!(v["ok"], true);
        assert_eq!(v["field.level"], "x");
        assert_eq!(v["ratio"], 0.25);
        assert_eq!(v["esc"], "\u{1b}[31m\\ é");
        assert!(v["target"].as_str().unwrap().starts_with("maas"), "{v}");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }
}
