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

/// The event formatter of `--log-format json`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Map::new();
        // Outermost span first, so that inner spans and then the event override.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&f.fields) {
                        fields.extend(m);
                    }
                }
            }
        }
        let mut own = Map::new();
        event.record(&mut JsonVisitor(&mut own));
        let message = own.remove("message").unwrap_or(Value::String(String::new()));
        fields.extend(own);

        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        // The four fixed keys first (for a human reading the line), then the fields in name order.
        let mut line = String::with_capacity(256);
        line.push('{');
        for (k, v) in [
            ("timestamp", Value::String(timestamp)),
            ("level", Value::String(meta.level().to_string())),
            ("target", Value::String(meta.target().to_string())),
            ("message", message),
        ] {
            if k != "timestamp" {
                line.push(',');
            }
            line.push_str(&format!("{}:{v}", Value::from(k)));
        }
        for (k, v) in fields {
            let key = if RESERVED.contains(&k.as_str()) { format!("field.{k}") } else { k };
            line.push_str(&format!(",{}:{v}", Value::String(key)));
        }
        line.push('}');
        writeln!(writer, "{line}")
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
            tracing::warn!(model = "m", rows = 3u64, ok = true, level = "x", "quote \" and\nnewline {}", 1);
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
        assert!(v["target"].as_str().unwrap().starts_with("maas"), "{v}");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }
}
