//! Request ids (`x-request-id`) and W3C trace context (`traceparent`): what a request arrives with,
//! what it is given when it has none (or an unusable one), and the tracing span that carries both on
//! every log line of the request.
//!
//! This id is the transport's: it is not KServe v2's request `id` field, which stays part of the
//! inference message and is echoed in the response body as before.
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The header (HTTP) and metadata key (gRPC) of the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The W3C trace context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Longest request id accepted from a client, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of the request being served, in the request's extensions (http and tonic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Why a client's request id was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    Empty,
    TooLong(usize),
    /// The byte at this index is not visible ASCII (`!`..=`~`).
    BadByte(usize),
    /// The header was sent more than once.
    Repeated,
}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replaced::Empty => write!(f, "it was empty"),
            Replaced::TooLong(n) => write!(f, "it was {n} bytes long, more than {MAX_REQUEST_ID_LEN}"),
            Replaced::BadByte(i) => write!(f, "byte {i} is not visible ASCII ('!' to '~')"),
            Replaced::Repeated => write!(f, "the header was sent more than once"),
        }
    }
}

/// Checks a client's request id: 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII (no spaces, no
/// control characters), so that it can go into a log line and a response header as it is.
pub fn check_request_id(id: &[u8]) -> Result<&str, Replaced> {
    if id.is_empty() {
        return Err(Replaced::Empty);
    }
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err(Replaced::TooLong(id.len()));
    }
    if let Some(i) = id.iter().position(|b| !(b'!'..=b'~').contains(b)) {
        return Err(Replaced::BadByte(i));
    }
    // Visible ASCII is UTF-8.
    std::str::from_utf8(id).map_err(|_| Replaced::BadByte(0))
}

/// A new request id: 128 bits as 32 lowercase hex digits.
///
/// Two 64-bit halves, each the SplitMix64 finalizer (a bijection) of a process-wide counter mixed
/// with a per-process key (from std's `RandomState`, which the operating system's random source
/// seeds): ids are unique within a process and differ across processes, without a random-number
/// crate and without hashing or formatting machinery on the request path.
pub fn new_request_id() -> String {
    static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let &(k0, k1) = KEYS.get_or_init(|| {
        let s = std::collections::hash_map::RandomState::new();
        let key = |lane: u64| {
            let mut h = s.build_hasher();
            h.write_u64(lane);
            h.finish()
        };
        (key(0), key(1))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 32];
    hex_into(&mut out[..16], splitmix(n ^ k0));
    hex_into(&mut out[16..], splitmix(n.wrapping_add(k1)));
    out.iter().map(|&b| char::from(b)).collect()
}

/// SplitMix64's finalizer: a bijection of u64 that spreads every input bit over the output.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `v` as 16 lowercase hex digits into `out`.
fn hex_into(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A valid W3C `traceparent`'s ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// The caller's span (the header's parent-id): 16 lowercase hex digits, not all zero.
    pub span_id: String,
    pub sampled: bool,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `traceparent` as W3C Trace Context level 1 specifies:
/// `version-traceid-parentid-flags`, lowercase hex, version `ff` invalid, all-zero ids invalid; version
/// `00` has exactly these four parts, a later version may add parts after a `-`. `None` = invalid
/// (ignored, as the specification says).
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let s = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let version = s.get(0..2)?;
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    let rest = s.get(2..)?;
    let (trace_id, span_id, flags) = (rest.get(1..33)?, rest.get(34..50)?, rest.get(51..53)?);
    let dashes = [rest.get(0..1)?, rest.get(33..34)?, rest.get(50..51)?];
    if dashes != ["-", "-", "-"] {
        return None;
    }
    let tail = rest.get(53..)?;
    let tail_ok = if version == "00" { tail.is_empty() } else { tail.is_empty() || tail.starts_with('-') };
    if !tail_ok || !lower_hex(trace_id, 32) || !lower_hex(span_id, 16) || !lower_hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some(TraceParent { trace_id: trace_id.to_string(), span_id: span_id.to_string(), sampled })
}

/// What a request is known by in the logs.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    /// Set when the client sent a request id that could not be used (a new one was made).
    pub replaced: Option<Replaced>,
    pub trace: Option<TraceParent>,
}

impl RequestIds {
    /// The ids of a request with these headers (HTTP/2 headers are gRPC metadata).
    pub fn from_headers(headers: &http::HeaderMap) -> RequestIds {
        let mut given = headers.get_all(REQUEST_ID_HEADER).iter();
        let (request_id, replaced) = match (given.next(), given.next()) {
            (None, _) => (new_request_id(), None),
            (Some(_), Some(_)) => (new_request_id(), Some(Replaced::Repeated)),
            (Some(v), None) => match check_request_id(v.as_bytes()) {
                Ok(id) => (id.to_string(), None),
                Err(why) => (new_request_id(), Some(why)),
            },
        };
        let trace = headers.get(TRACEPARENT_HEADER).and_then(|v| parse_traceparent(v.as_bytes()));
        RequestIds { request_id, replaced, trace }
    }

    /// The span every log line of the request is written in: `request{request_id, trace_id, span_id}`.
    ///
    /// It has level ERROR so that it is enabled whenever any event is: a span's level only decides
    /// whether the span exists, and a request's warnings must carry its id even with `RUST_LOG=warn`.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::error_span!(
            target: "maas::request",
            "request",
            request_id = %self.request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(t) = &self.trace {
            span.record("trace_id", t.trace_id.as_str());
            span.record("span_id", t.span_id.as_str());
        }
        if let Some(why) = self.replaced {
            span.in_scope(|| {
                tracing::info!(target: "maas::request", "the client's {REQUEST_ID_HEADER} was replaced by a new id: {why}")
            });
        }
        span
    }

    /// The request id as a header value.
    pub fn header_value(&self) -> http::HeaderValue {
        // Checked or generated: visible ASCII, always a valid header value.
        http::HeaderValue::from_str(&self.request_id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        assert_eq!(check_request_id(b"abc-123_x.y:z/1"), Ok("abc-123_x.y:z/1"));
        assert_eq!(check_request_id(b""), Err(Replaced::Empty));
        assert_eq!(check_request_id(&[b'a'; 128]).map(str::len), Ok(128));
        assert_eq!(check_request_id(&[b'a'; 129]), Err(Replaced::TooLong(129)));
        assert_eq!(check_request_id(b"a b"), Err(Replaced::BadByte(1)));
        assert_eq!(check_request_id(b"ab\ninjected"), Err(Replaced::BadByte(2)));
        assert_eq!(check_request_id("é".as_bytes()), Err(Replaced::BadByte(0)));
    }

    #[test]
    fn new_ids_are_32_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| lower_hex(id, 32)), "{ids:?}");
    }

    #[test]
    fn traceparent_is_validated() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = parse_traceparent(ok.as_bytes()).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id, "00f067aa0ba902b7");
        assert!(t.sampled);
        assert!(!parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled);
        // A later version may append fields.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn ids_from_headers() {
        let mut h = http::HeaderMap::new();
        let ids = RequestIds::from_headers(&h);
        assert!(lower_hex(&ids.request_id, 32) && ids.replaced.is_none() && ids.trace.is_none());
        h.insert(REQUEST_ID_HEADER, "client-1".parse().unwrap());
        assert_eq!(RequestIds::from_headers(&h).request_id, "client-1");
        h.append(REQUEST_ID_HEADER, "client-2".parse().unwrap());
        let ids = RequestIds::from_headers(&h);
        assert_eq!(ids.replaced, Some(Replaced::Repeated));
        assert!(lower_hex(&ids.request_id, 32));
        h.insert(REQUEST_ID_HEADER, "has space".parse().unwrap());
        assert_eq!(RequestIds::from_headers(&h).replaced, Some(Replaced::BadByte(3)));
        h.insert(TRACEPARENT_HEADER, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(RequestIds::from_headers(&h).trace.unwrap().span_id, "00f067aa0ba902b7");
    }
}
