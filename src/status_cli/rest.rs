//! The optional REST part of `maas status`: `GET /maas/v1/models/{model}` on the REST port, for what
//! the gRPC APIs do not carry (execution providers, load times). Anything that goes wrong here
//! (no REST port, an older maas without the route, a timeout) just leaves those columns empty.
//!
//! A plain HTTP/1.0 GET over a TCP stream: the one request needs no HTTP client library.
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the REST route says about one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    pub providers: Option<Vec<String>>,
    pub loaded_at: Option<String>,
    pub load_seconds: Option<f64>,
}

/// Percent-encodes a path segment (everything but RFC 3986's unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GET `path` from `address`; the body of a 200 answer, else None.
async fn get(address: &str, path: &str, timeout: Duration) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        // Bounded: a details document is small.
        stream.take(16 << 20).read_to_end(&mut answer).await.ok()?;
        Some(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange).await.ok()??;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status_line = answer.split(|&b| b == b'\n').next()?;
    let ok = std::str::from_utf8(status_line).ok()?.split_whitespace().nth(1) == Some("200");
    ok.then(|| answer[split + 4..].to_vec())
}

/// The details of each version of `model`, keyed by version; None when the route did not answer.
pub async fn model_details(address: &str, model: &str, timeout: Duration) -> Option<HashMap<i64, Details>> {
    let body = get(address, &format!("/maas/v1/models/{}", encode_segment(model)), timeout).await?;
    let value: Value = serde_json::from_slice(&body).ok()?;
    Some(parse_details(&value))
}

fn version_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn first<'a>(obj: &'a serde_json::Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
}

fn details_of(obj: &serde_json::Map<String, Value>) -> Details {
    let providers = first(obj, &["providers", "execution_providers"]).and_then(|v| match v {
        Value::Array(list) => Some(list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect()),
        Value::String(s) => Some(s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()),
        _ => None,
    });
    let loaded_at = first(obj, &["loaded_at", "available_since", "load_finished_at"]).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let load_seconds = first(obj, &["load_seconds", "load_time_seconds", "load_duration_seconds"])
        .and_then(Value::as_f64)
        .or_else(|| first(obj, &["load_time_ms", "load_ms"]).and_then(Value::as_f64).map(|ms| ms / 1e3));
    Details { providers, loaded_at, load_seconds }
}

/// Reads the versions of a details document: `{"versions": [{"version": .., ...}, ...]}` or
/// `{"versions": {"<version>": {...}}}` (providers under `providers` or `execution_providers`, a list
/// or a comma-separated string; load time under `load_seconds`, `load_time_seconds`,
/// `load_duration_seconds` or `load_time_ms`; the time it finished under `loaded_at`).
pub fn parse_details(value: &Value) -> HashMap<i64, Details> {
    let mut out = HashMap::new();
    let versions = value.get("versions").or_else(|| value.get("model_version_status"));
    match versions {
        Some(Value::Array(list)) => {
            for v in list {
                if let (Some(obj), Some(n)) = (v.as_object(), v.get("version").and_then(version_of)) {
                    out.insert(n, details_of(obj));
                }
            }
        }
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if let (Ok(n), Some(obj)) = (k.parse::<i64>(), v.as_object()) {
                    out.insert(n, details_of(obj));
                }
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_documents() {
        let d = parse_details(&json!({"versions": [
            {"version": "2", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "load_seconds": 1.5,
             "loaded_at": "2025-01-01T00:00:00Z"},
            {"version": 1, "execution_providers": "cpu", "load_time_ms": 250}
        ]}));
        assert_eq!(
            d[&2].providers.as_deref(),
            Some(&["CUDAExecutionProvider".to_string(), "CPUExecutionProvider".to_string()][..])
        );
        assert_eq!(d[&2].load_seconds, Some(1.5));
        assert_eq!(d[&2].loaded_at.as_deref(), Some("2025-01-01T00:00:00Z"));
        assert_eq!(d[&1].providers.as_deref(), Some(&["cpu".to_string()][..]));
        assert_eq!(d[&1].load_seconds, Some(0.25));
        let d = parse_details(&json!({"versions": {"3": {"providers": []}}}));
        assert_eq!(d[&3].providers.as_deref(), Some(&[][..]));
        assert!(parse_details(&json!({"error": "x"})).is_empty());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_segment("a b/c:d"), "a%20b%2Fc%3Ad");
    }

    #[tokio::test]
    async fn nothing_listening_means_no_details() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert_eq!(model_details(&addr, "m", Duration::from_secs(2)).await, None);
    }
}
