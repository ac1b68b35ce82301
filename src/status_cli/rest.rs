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
    /// Execution providers actually registered (`execution_providers`; null while not loaded).
    pub providers: Option<Vec<String>>,
    /// Loading and warming up, in seconds (`load_time_ms`).
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

/// Reads the versions of the route's document:
/// `{"versions": [{"version": 2, "execution_providers": ["CPUExecutionProvider"], "load_time_ms": 7, ...}]}`.
pub fn parse_details(value: &Value) -> HashMap<i64, Details> {
    let mut out = HashMap::new();
    for v in value.get("versions").and_then(Value::as_array).into_iter().flatten() {
        let Some(version) = v.get("version").and_then(Value::as_i64) else { continue };
        let providers = v
            .get("execution_providers")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect());
        let load_seconds = v.get("load_time_ms").and_then(Value::as_f64).map(|ms| ms / 1e3);
        out.insert(version, Details { providers, load_seconds });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_documents() {
        // What `GET /maas/v1/models/{m}` answers (README, "Status route").
        let d = parse_details(&json!({"model": "m", "problem": null, "versions": [
            {"version": 2, "state": "AVAILABLE", "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "sessions": 2, "load_time_ms": 1500},
            {"version": 1, "state": "END", "execution_providers": null, "load_time_ms": null}
        ]}));
        let cuda_cpu = ["CUDAExecutionProvider".to_string(), "CPUExecutionProvider".to_string()];
        assert_eq!(d[&2], Details { providers: Some(cuda_cpu.to_vec()), load_seconds: Some(1.5) });
        assert_eq!(d[&1], Details::default());
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
