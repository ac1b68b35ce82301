//! Protocol front ends. Each translates its wire types into the core types of [`crate::tensor`] and
//! back; wire types stop here.
pub mod kserve_grpc;
pub mod rest;
pub mod tf_tensor;
pub mod tfserving;
pub mod v2_tensor;
pub mod v2_types;

/// The client's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), if any.
pub fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    std::time::Instant::now().checked_add(d)
}

#[cfg(test)]
mod tests {
    use super::grpc_deadline;
    use std::time::{Duration, Instant};
    use tonic::metadata::MetadataMap;

    #[test]
    fn parses_grpc_timeout() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_deadline(&m), None);
        m.insert("grpc-timeout", "250m".parse().unwrap());
        let d = grpc_deadline(&m).unwrap().duration_since(Instant::now());
        assert!(d <= Duration::from_millis(250) && d > Duration::from_millis(200), "{d:?}");
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert!(grpc_deadline(&m).unwrap() > Instant::now() + Duration::from_millis(1900));
        m.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_deadline(&m), None);
    }
}
