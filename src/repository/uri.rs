//! Where a model repository or a model's base path lives: a local directory, or a prefix in an
//! object store (`s3://`, `gs://`, `az://`, Triton's `as://account/container/...`).
use std::fmt;
use std::path::{Path, PathBuf};

/// The object store behind a remote URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    S3,
    Gcs,
    Azure,
}

/// A prefix in an object store. Keys are normalised: no empty, `.` or `..` segments, no leading or
/// trailing `/` (Triton #2403: a leading slash broke listings on distributed MinIO).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteUri {
    pub provider: Provider,
    /// An endpoint named in the URI itself (Triton's `s3://host:port/bucket/...` is plain HTTP,
    /// `s3://https://host:port/bucket/...` HTTPS). Otherwise the environment names it.
    pub endpoint: Option<String>,
    /// Azure storage account from `as://account/container/...`.
    pub account: Option<String>,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// Key prefix; "" for the whole bucket.
    pub prefix: String,
}

impl RemoteUri {
    /// The URI of `name` under this prefix.
    pub fn join(&self, name: &str) -> RemoteUri {
        let mut u = self.clone();
        u.prefix = if u.prefix.is_empty() { name.to_string() } else { format!("{}/{name}", u.prefix) };
        u
    }

    /// A relative path naming this prefix in the local model cache: provider, endpoint or account,
    /// bucket, then the prefix's segments (all validated, so it stays under the cache root).
    pub fn cache_path(&self) -> PathBuf {
        let mut p = PathBuf::from(match self.provider {
            Provider::S3 => "s3",
            Provider::Gcs => "gs",
            Provider::Azure => "az",
        });
        if let Some(e) = &self.endpoint {
            let host = e.split("://").nth(1).unwrap_or(e);
            p.push(host.replace([':', '/'], "_"));
        }
        if let Some(a) = &self.account {
            p.push(a);
        }
        p.push(&self.bucket);
        for seg in self.prefix.split('/').filter(|s| !s.is_empty()) {
            p.push(seg);
        }
        p
    }
}

impl fmt::Display for RemoteUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.provider, &self.account) {
            (Provider::S3, _) => {
                f.write_str("s3://")?;
                match &self.endpoint {
                    Some(e) if e.starts_with("http://") => write!(f, "{}/", &e["http://".len()..])?,
                    Some(e) => write!(f, "{e}/")?,
                    None => {}
                }
            }
            (Provider::Gcs, _) => f.write_str("gs://")?,
            (Provider::Azure, Some(account)) => write!(f, "as://{account}/")?,
            (Provider::Azure, None) => f.write_str("az://")?,
        }
        f.write_str(&self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

/// A local directory or an object-store prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteUri),
}

impl Location {
    /// Parses a repository or base path: a plain path, `file:///abs/path`, or an object-store URI.
    pub fn parse(text: &str) -> Result<Location, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let remote = |provider, endpoint, account, rest: &str| -> Result<Location, String> {
            let segs = segments(text, rest)?;
            let Some((bucket, prefix)) = segs.split_first() else {
                return Err(format!("'{text}' names no bucket; expected {scheme}://<bucket>/<prefix>"));
            };
            Ok(Location::Remote(RemoteUri {
                provider,
                endpoint,
                account,
                bucket: bucket.to_string(),
                prefix: prefix.join("/"),
            }))
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => match rest.strip_prefix("localhost").unwrap_or(rest) {
                p if p.starts_with('/') => Ok(Location::Local(PathBuf::from(p))),
                _ => Err(format!("'{text}' is not an absolute file URI; expected file:///<absolute path>")),
            },
            "s3" | "s3a" => {
                // Triton's forms: s3://https://host:port/bucket/p, s3://host:port/bucket/p (HTTP).
                let (endpoint, rest) = if let Some((inner, tail)) = rest.split_once("://") {
                    let inner = inner.to_ascii_lowercase();
                    if inner != "http" && inner != "https" {
                        return Err(format!("'{text}': an endpoint inside an s3:// URI must be http:// or https://"));
                    }
                    let (host, after) = tail.split_once('/').unwrap_or((tail, ""));
                    (Some(format!("{inner}://{host}")), after)
                } else {
                    match rest.split_once('/') {
                        Some((host, after)) if host.contains(':') => (Some(format!("http://{host}")), after),
                        None if rest.contains(':') => (Some(format!("http://{rest}")), ""),
                        _ => (None, rest),
                    }
                };
                remote(Provider::S3, endpoint, None, rest)
            }
            "gs" => remote(Provider::Gcs, None, None, rest),
            "az" | "azure" => remote(Provider::Azure, None, None, rest),
            "as" => {
                let (account, after) = rest.split_once('/').unwrap_or((rest, ""));
                if account.is_empty() {
                    return Err(format!("'{text}' names no account; expected as://<account>/<container>/<prefix>"));
                }
                remote(Provider::Azure, None, Some(account.to_string()), after)
            }
            other => Err(format!(
                "'{text}' has the unsupported scheme '{other}://'; maas reads s3://, gs://, az://, \
                 as://<account>/, file:// and plain paths"
            )),
        }
    }

    /// A command-line path: parsed as a URI when it has a scheme, otherwise kept as it is (even
    /// when it is not UTF-8).
    pub fn from_arg(arg: &Path) -> Result<Location, String> {
        match arg.to_str() {
            Some(s) if s.contains("://") => Location::parse(s),
            _ => Ok(Location::Local(arg.to_path_buf())),
        }
    }

    /// `name` under this location.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(name)),
            Location::Remote(u) => Location::Remote(u.join(name)),
        }
    }

    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Remote(_) => None,
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Local(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Local(p.to_path_buf())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(u) => write!(f, "{u}"),
        }
    }
}

/// The `/`-separated segments of a key, without empty ones; `.` and `..` are refused.
fn segments<'a>(text: &str, rest: &'a str) -> Result<Vec<&'a str>, String> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!("'{text}' has a '.' or '..' segment"));
    }
    Ok(segs)
}

/// Whether a relative key's segments are all safe to use as local path components.
pub fn safe_key(rel: &str) -> bool {
    !rel.is_empty()
        && rel.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\') && !s.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(text: &str) -> RemoteUri {
        match Location::parse(text).unwrap() {
            Location::Remote(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_paths_and_file_uris_are_local() {
        assert_eq!(Location::parse("models").unwrap(), Location::Local("models".into()));
        assert_eq!(Location::parse("/srv/m").unwrap(), Location::Local("/srv/m".into()));
        assert_eq!(Location::parse("file:///srv/m").unwrap(), Location::Local("/srv/m".into()));
        assert_eq!(Location::parse("file://localhost/srv/m").unwrap(), Location::Local("/srv/m".into()));
        assert_eq!(
            Location::parse("file://srv/m").unwrap_err(),
            "'file://srv/m' is not an absolute file URI; expected file:///<absolute path>"
        );
    }

    #[test]
    fn s3_uris() {
        let u = remote("s3://bucket/models/resnet/");
        assert_eq!((u.provider, u.bucket.as_str(), u.prefix.as_str()), (Provider::S3, "bucket", "models/resnet"));
        assert_eq!(u.endpoint, None);
        assert_eq!(u.to_string(), "s3://bucket/models/resnet");
        // Normalised: doubled and leading slashes go.
        assert_eq!(remote("s3://bucket//models").prefix, "models");
        assert_eq!(remote("s3://bucket").prefix, "");
        assert_eq!(remote("s3a://b/p").to_string(), "s3://b/p");
        // Triton's endpoint forms.
        let u = remote("s3://127.0.0.1:9000/bucket/p");
        assert_eq!((u.endpoint.as_deref(), u.bucket.as_str()), (Some("http://127.0.0.1:9000"), "bucket"));
        assert_eq!(u.to_string(), "s3://127.0.0.1:9000/bucket/p");
        let u = remote("s3://https://minio.local:9000/bucket/p");
        assert_eq!(u.endpoint.as_deref(), Some("https://minio.local:9000"));
        assert_eq!(u.to_string(), "s3://https://minio.local:9000/bucket/p");
        assert_eq!(u.cache_path(), PathBuf::from("s3/minio.local_9000/bucket/p"));
    }

    #[test]
    fn gcs_and_azure_uris() {
        let u = remote("gs://b/a/b");
        assert_eq!((u.provider, u.to_string()), (Provider::Gcs, "gs://b/a/b".to_string()));
        let u = remote("az://container/m");
        assert_eq!((u.provider, u.account.as_deref(), u.bucket.as_str()), (Provider::Azure, None, "container"));
        let u = remote("as://acct/container/m");
        assert_eq!((u.account.as_deref(), u.bucket.as_str(), u.prefix.as_str()), (Some("acct"), "container", "m"));
        assert_eq!(u.to_string(), "as://acct/container/m");
        assert_eq!(u.cache_path(), PathBuf::from("az/acct/container/m"));
        assert_eq!(u.join("x").to_string(), "as://acct/container/m/x");
    }

    #[test]
    fn bad_uris_are_named() {
        assert_eq!(Location::parse("s3://").unwrap_err(), "'s3://' names no bucket; expected s3://<bucket>/<prefix>");
        assert_eq!(Location::parse("s3://b/../x").unwrap_err(), "'s3://b/../x' has a '.' or '..' segment");
        assert_eq!(
            Location::parse("hdfs://n/p").unwrap_err(),
            "'hdfs://n/p' has the unsupported scheme 'hdfs://'; maas reads s3://, gs://, az://, as://<account>/, \
             file:// and plain paths"
        );
        assert_eq!(
            Location::parse("as:///c").unwrap_err(),
            "'as:///c' names no account; expected as://<account>/<container>/<prefix>"
        );
    }

    #[test]
    fn keys_that_could_leave_the_cache_are_unsafe() {
        assert!(safe_key("1/model.onnx"));
        assert!(!safe_key("1/../../etc/passwd"));
        assert!(!safe_key("1//model.onnx"));
        assert!(!safe_key(""));
    }
}
