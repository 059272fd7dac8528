//! How answers are shown: crictl-like tables (ids cut to 13 characters, ages, sizes), or
//! JSON in the CRI's protobuf JSON naming (camelCase keys, enum values by name).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The length ids are cut to in tables (crictl's).
pub const SHORT_ID: usize = 13;

pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(SHORT_ID)]
}

/// A table: a header row and rows, printed with each column as wide as its widest cell
/// and three spaces between columns.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < r.len() {
                    let pad = width[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How long ago a CRI timestamp (nanoseconds since the epoch) was: "12s ago", "3m ago".
pub fn age(nanos: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if nanos <= 0 {
        return "-".into();
    }
    let s = (now - nanos / 1_000_000_000).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Bytes in decimal units with three significant digits, as crictl shows sizes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        return format!("{bytes}B");
    }
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$}{}", UNITS[u])
}

/// A CRI timestamp (nanoseconds since the epoch) in RFC 3339, UTC, to the microsecond.
pub fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let micros = nanos.rem_euclid(1_000_000_000) / 1000;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Names an enum field: (the enclosing object's key, the field's key, its number) → name.
pub type EnumNames = dyn Fn(&str, &str, i64) -> Option<String>;

/// A CRI message as JSON: serde's form with keys in camelCase and each enum field named
/// by `names` (which sees the enclosing object's key too: a pod's `state` and a
/// container's are different enums).
pub fn json<T: serde::Serialize>(msg: &T, names: &EnumNames) -> Value {
    let v = serde_json::to_value(msg).unwrap_or(Value::Null);
    camel(v, "", names)
}

fn camel(v: Value, parent: &str, names: &EnumNames) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = camel_key(&k);
                let v = match v.as_i64().and_then(|n| names(parent, &key, n)) {
                    Some(name) => Value::String(name),
                    None => camel(v, &key, names),
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| camel(v, parent, names)).collect()),
        v => v,
    }
}

/// Which CRI state enum a message's `state` fields are (where the message does not say
/// itself: an event's pod status and container statuses do).
#[derive(Clone, Copy)]
pub enum States {
    Pod,
    Container,
}

/// A CRI message as JSON with the CRI's enum fields by name: states, event types,
/// namespace modes, mount propagation.
pub fn cri_json<T: serde::Serialize>(msg: &T, states: States) -> Value {
    json(msg, &move |parent, key, n| cri_enum(states, parent, key, n))
}

fn cri_enum(states: States, parent: &str, key: &str, n: i64) -> Option<String> {
    use berth_cri::v1 as cri;
    let n = i32::try_from(n).ok()?;
    let states = match parent {
        "podSandboxStatus" => States::Pod,
        "containersStatuses" => States::Container,
        _ => states,
    };
    let name = match (key, states) {
        ("state", States::Pod) => cri::PodSandboxState::try_from(n).ok()?.as_str_name(),
        ("state", States::Container) => cri::ContainerState::try_from(n).ok()?.as_str_name(),
        ("containerEventType", _) => cri::ContainerEventType::try_from(n).ok()?.as_str_name(),
        ("network" | "pid" | "ipc" | "userns", _) if parent == "namespaceOptions" => {
            cri::NamespaceMode::try_from(n).ok()?.as_str_name()
        }
        ("propagation", _) => cri::MountPropagation::try_from(n).ok()?.as_str_name(),
        _ => return None,
    };
    Some(name.to_string())
}

fn camel_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut up = false;
    for c in k.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Pretty JSON text with a trailing newline.
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The runtime's verbose info map as JSON: each value parsed when it is JSON (berthd and
/// containerd put a JSON document under "info"), kept as a string otherwise.
pub fn info_map(info: &std::collections::HashMap<String, String>) -> Value {
    let mut m = Map::new();
    for (k, v) in info {
        let parsed = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        m.insert(k.clone(), parsed);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["a".into(), "web".into()]);
        t.row(vec!["longer-id".into(), "".into()]);
        assert_eq!(t.render(), "ID          NAME\na           web\nlonger-id\n");
    }

    #[test]
    fn sizes_dates_and_keys() {
        assert_eq!(size(999), "999B");
        assert_eq!(size(4_390_000), "4.39MB");
        assert_eq!(size(123_400_000_000), "123GB");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_709_251_199_123_456_789),
            "2024-02-29T23:59:59.123456Z"
        );
        assert_eq!(camel_key("pod_sandbox_id"), "podSandboxId");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789abc");
    }

    #[test]
    fn json_names_enums_by_key() {
        #[derive(serde::Serialize)]
        struct S {
            pod_sandbox_id: String,
            state: i32,
            attempt: i32,
        }
        let v = json(
            &S {
                pod_sandbox_id: "x".into(),
                state: 1,
                attempt: 1,
            },
            &|_, k, n| (k == "state" && n == 1).then(|| "READY".to_string()),
        );
        assert_eq!(
            v,
            serde_json::json!({"podSandboxId": "x", "state": "READY", "attempt": 1})
        );
    }
}
