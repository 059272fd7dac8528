//! berthd's log output: readable text lines, or (`[log] format = "json"`) one JSON object
//! per line in which the fields of the spans an event happened in (a pod operation's
//! `pod_id`, ...) sit beside the event's own (`container_id`, `error`, ...).

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the global subscriber (stderr, no colours). Returns false when one was
/// already installed.
pub fn init(level: tracing::Level, format: LogFormat) -> bool {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init()
            .is_ok(),
    }
}

/// The JSON line format: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`,
/// every field of the enclosing spans (outermost first, an inner one overriding), the
/// event's fields (overriding those), and `spans`, the enclosing spans' names.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        obj.insert("timestamp".into(), Value::String(ts));
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_string()));
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                spans.push(Value::String(span.name().to_string()));
                let ext = span.extensions();
                // With JsonFields the span's fields were stored as one JSON object.
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields) {
                    obj.extend(m);
                }
            }
        }
        event.record(&mut Fields(&mut obj));
        if !spans.is_empty() {
            obj.insert("spans".into(), Value::Array(spans));
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// An event's fields into the object (numbers and booleans as JSON values, the rest as
/// text).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().into(), Value::String(v.into()));
    }
    fn record_i64(&mut self, f: &Field, v: i64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &Field, v: u64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_bool(&mut self, f: &Field, v: bool) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_f64(&mut self, f: &Field, v: f64) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
        self.0.insert(f.name().into(), Value::String(v.to_string()));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        self.0
            .insert(f.name().into(), Value::String(format!("{v:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
    fn one_object_per_line_with_span_and_event_fields() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("run_pod_sandbox", pod_id = %"p1", pod = "web");
            let _g = span.enter();
            tracing::info!(ips = ?["10.0.0.2"], pid = 42u32, ok = true, "pod \"ready\"\nnow");
            let inner = tracing::info_span!("inner", pod = "override");
            let _i = inner.enter();
            tracing::warn!(container_id = "c1", "second");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let a = &lines[0];
        assert_eq!(a["level"], "INFO");
        assert_eq!(a["message"], "pod \"ready\"\nnow");
        assert_eq!(a["pod_id"], "p1");
        assert_eq!(a["pod"], "web");
        assert_eq!(a["pid"], 42);
        assert_eq!(a["ok"], true);
        assert_eq!(a["ips"], "[\"10.0.0.2\"]");
        assert_eq!(a["spans"], serde_json::json!(["run_pod_sandbox"]));
        assert!(a["timestamp"].as_str().unwrap().ends_with('Z'), "{a}");
        let b = &lines[1];
        assert_eq!(b["level"], "WARN");
        assert_eq!(
            (&b["pod_id"], &b["pod"], &b["container_id"]),
            (&"p1".into(), &"override".into(), &"c1".into())
        );
    }
}
