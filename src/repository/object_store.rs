//! Object-store clients for remote repositories (S3, GCS, Azure Blob through the `object_store`
//! crate), configured from the environment the way the cloud SDKs name it, and the one recursive
//! listing a poll makes.
use super::listing::ObjectInfo;
use super::uri::{Provider, RemoteUri};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Environment variables the object-store clients read, captured once. Its `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(pub BTreeMap<String, String>);

impl Env {
    /// The variables of this process that configure object stores.
    pub fn from_process() -> Env {
        Env(std::env::vars()
            .filter(|(k, _)| {
                ["AWS_", "GOOGLE_", "AZURE_", "S3_"].iter().any(|p| k.starts_with(p)) || k == "SERVICE_ACCOUNT"
            })
            .collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env(pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn truthy(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    }

    /// Replaces every credential value of the environment found in `text` (a store's error can
    /// echo a key id, e.g. S3's SignatureDoesNotMatch), on one line (an error body may be XML).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for (k, v) in &self.0 {
            let secret = ["KEY", "SECRET", "TOKEN", "PASSWORD", "SAS", "CREDENTIAL"].iter().any(|s| k.contains(s));
            if secret && v.len() >= 4 {
                out = out.replace(v.as_str(), "<redacted>");
            }
        }
        out
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// How maas reads remote repositories.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub env: Env,
    /// Fall back to the cloud's instance-metadata credentials (AWS IMDS, GCP metadata server, Azure
    /// managed identity) when the environment names none. Real clouds need it; off, a URI without
    /// credentials fails at once without contacting anything.
    pub metadata_credentials: bool,
    /// The local cache of downloaded versions.
    pub cache_dir: PathBuf,
    /// Listing period (None = list only at start and when asked to).
    pub poll_interval: Option<Duration>,
    /// Objects downloaded at the same time.
    pub parallel_downloads: usize,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            env: Env::from_process(),
            metadata_credentials: true,
            cache_dir: default_cache_dir(),
            poll_interval: Some(Duration::from_secs(30)),
            parallel_downloads: 4,
        }
    }
}

/// `$XDG_CACHE_HOME/maas/models`, else `~/.cache/maas/models`, else a directory under the system
/// temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("maas-cache"));
    base.join("maas").join("models")
}

/// HTTP settings: no limit on a whole request (a large model takes a while to stream), but each
/// read must make progress; a few retries, then the poll's own backoff takes over.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(30))
}

fn retry_config() -> RetryConfig {
    RetryConfig { backoff: BackoffConfig::default(), max_retries: 3, retry_timeout: Duration::from_secs(20) }
}

/// The S3 endpoint: from the URI, `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`, or TF
/// Serving's `S3_ENDPOINT` (host:port; HTTPS unless `S3_USE_HTTPS=0`).
fn s3_endpoint(uri: &RemoteUri, env: &Env) -> Option<String> {
    if let Some(e) = &uri.endpoint {
        return Some(e.clone());
    }
    if let Some(e) = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().find_map(|k| env.get(k)) {
        return Some(e.to_string());
    }
    let e = env.get("S3_ENDPOINT")?;
    if e.contains("://") {
        return Some(e.to_string());
    }
    let https = env.get("S3_USE_HTTPS").is_none_or(|v| !matches!(v, "0" | "false" | "False" | "FALSE"));
    Some(format!("{}://{e}", if https { "https" } else { "http" }))
}

/// `AWS_REGION` -> the builder's `aws_region` key, for variables with the provider's prefix.
fn config_key<K: std::str::FromStr>(var: &str, prefix: &str) -> Option<K> {
    var.starts_with(prefix).then(|| var.to_ascii_lowercase().parse().ok()).flatten()
}

fn no_credentials(uri: &RemoteUri, what: &str) -> String {
    format!(
        "{uri}: no credentials: set {what}; the cloud instance-metadata fallback is off \
         (--object-store-metadata-credentials=false)"
    )
}

/// The process's one rustls crypto provider: ring (object_store's HTTP client is built without one;
/// a second provider would make rustls refuse to pick). Installing it again is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the client for `uri`. Nothing is contacted here.
pub fn build_store(uri: &RemoteUri, cfg: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>, String> {
    install_crypto_provider();
    let env = &cfg.env;
    let invalid =
        |e: object_store::Error| format!("{uri}: invalid object store configuration: {}", env.redact(&e.to_string()));
    match uri.provider {
        Provider::S3 => {
            let mut b = AmazonS3Builder::new().with_client_options(client_options()).with_retry(retry_config());
            for (k, v) in &env.0 {
                if let Some(key) = config_key::<AmazonS3ConfigKey>(k, "AWS_") {
                    b = b.with_config(key, v);
                }
            }
            if let Some(e) = s3_endpoint(uri, env) {
                if e.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                b = b.with_endpoint(e);
            }
            let creds = (env.has("AWS_ACCESS_KEY_ID") && env.has("AWS_SECRET_ACCESS_KEY"))
                || (env.has("AWS_WEB_IDENTITY_TOKEN_FILE") && env.has("AWS_ROLE_ARN"))
                || env.has("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                || (env.has("AWS_CONTAINER_CREDENTIALS_FULL_URI") && env.has("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"))
                || env.truthy("AWS_SKIP_SIGNATURE");
            if !creds && !cfg.metadata_credentials {
                return Err(no_credentials(
                    uri,
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, \
                     or AWS_SKIP_SIGNATURE=true for a public bucket)",
                ));
            }
            Ok(Arc::new(b.with_bucket_name(&uri.bucket).build().map_err(invalid)?))
        }
        Provider::Gcs => {
            let mut b =
                GoogleCloudStorageBuilder::new().with_client_options(client_options()).with_retry(retry_config());
            if let Some(path) = env.get("SERVICE_ACCOUNT") {
                b = b.with_service_account_path(path);
            }
            for (k, v) in &env.0 {
                if let Some(key) = config_key::<GoogleConfigKey>(k, "GOOGLE_") {
                    b = b.with_config(key, v);
                }
            }
            let home = env.get("HOME").map(str::to_string).or_else(|| std::env::var("HOME").ok());
            let adc = home.map(|h| PathBuf::from(h).join(".config/gcloud/application_default_credentials.json"));
            let creds = ["GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY"]
                .iter()
                .chain(&["GOOGLE_APPLICATION_CREDENTIALS", "SERVICE_ACCOUNT"])
                .any(|k| env.has(k))
                || env.truthy("GOOGLE_SKIP_SIGNATURE")
                || adc.is_some_and(|p| p.is_file());
            if !creds && !cfg.metadata_credentials {
                return Err(no_credentials(uri, "GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_KEY)"));
            }
            Ok(Arc::new(b.with_bucket_name(&uri.bucket).build().map_err(invalid)?))
        }
        Provider::Azure => {
            let mut b = MicrosoftAzureBuilder::new().with_client_options(client_options()).with_retry(retry_config());
            // Triton's names first, so the SDK names override them.
            if let Some(a) = env.get("AZURE_STORAGE_ACCOUNT") {
                b = b.with_account(a);
            }
            if let Some(k) = env.get("AZURE_STORAGE_KEY") {
                b = b.with_access_key(k);
            }
            for (k, v) in &env.0 {
                if let Some(key) = config_key::<AzureConfigKey>(k, "AZURE_") {
                    b = b.with_config(key, v);
                }
            }
            if let Some(a) = &uri.account {
                b = b.with_account(a);
            }
            let creds = ["AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_KEY"]
                .iter()
                .chain(&["AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN"])
                .any(|k| env.has(k))
                || (env.has("AZURE_STORAGE_CLIENT_SECRET") || env.has("AZURE_CLIENT_SECRET"))
                || env.has("AZURE_FEDERATED_TOKEN_FILE")
                || env.truthy("AZURE_STORAGE_USE_EMULATOR")
                || env.truthy("AZURE_SKIP_SIGNATURE")
                || env.truthy("AZURE_USE_AZURE_CLI");
            if !creds && !cfg.metadata_credentials {
                return Err(no_credentials(uri, "AZURE_STORAGE_ACCOUNT_KEY (or a SAS token, or a client secret)"));
            }
            Ok(Arc::new(b.with_container_name(&uri.bucket).build().map_err(invalid)?))
        }
    }
}

/// One recursive, paginated listing of `uri`: every object under the prefix, keyed relative to it.
pub async fn list(store: &dyn ObjectStore, uri: &RemoteUri, env: &Env) -> Result<BTreeMap<String, ObjectInfo>, String> {
    let prefix = (!uri.prefix.is_empty()).then(|| object_store::path::Path::from(uri.prefix.as_str()));
    let strip = if uri.prefix.is_empty() { String::new() } else { format!("{}/", uri.prefix) };
    let mut stream = store.list(prefix.as_ref());
    let mut out = BTreeMap::new();
    while let Some(item) = stream.next().await {
        let meta = item.map_err(|e| format!("cannot list {uri}: {}", env.redact(&e.to_string())))?;
        let key = meta.location.as_ref().to_string();
        let Some(rel) = key.strip_prefix(&strip) else { continue };
        let info = ObjectInfo {
            key: key.clone(),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            last_modified: meta.last_modified.to_rfc3339(),
        };
        out.insert(rel.to_string(), info);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::uri::Location;

    fn uri(text: &str) -> RemoteUri {
        match Location::parse(text).unwrap() {
            Location::Remote(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn cfg(pairs: &[(&str, &str)], metadata: bool) -> ObjectStoreConfig {
        ObjectStoreConfig {
            env: Env::from_pairs(pairs.iter().copied()),
            metadata_credentials: metadata,
            ..Default::default()
        }
    }

    #[test]
    fn without_credentials_and_without_metadata_fallback_a_uri_fails_at_once() {
        for (text, what) in [
            ("s3://bucket/models", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            ("gs://bucket/models", "GOOGLE_APPLICATION_CREDENTIALS"),
            ("as://acct/c/models", "AZURE_STORAGE_ACCOUNT_KEY"),
        ] {
            let err = build_store(&uri(text), &cfg(&[("HOME", "/nonexistent")], false)).unwrap_err();
            assert!(err.starts_with(&format!("{text}: no credentials: set {what}")), "{err}");
            assert!(
                err.ends_with(
                    "the cloud instance-metadata fallback is off (--object-store-metadata-credentials=false)"
                ),
                "{err}"
            );
        }
        // With keys (or anonymous access) it builds; with the fallback on it builds too (and would
        // ask the metadata service on first use).
        let keys = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
        assert!(build_store(&uri("s3://bucket/m"), &cfg(&keys, false)).is_ok());
        assert!(build_store(&uri("s3://bucket/m"), &cfg(&[("AWS_SKIP_SIGNATURE", "true")], false)).is_ok());
        assert!(build_store(&uri("s3://bucket/m"), &cfg(&[], true)).is_ok());
    }

    #[test]
    fn endpoints_from_uri_sdk_names_and_tf_serving_names() {
        let env = |p: &[(&str, &str)]| Env::from_pairs(p.iter().copied());
        let u = uri("s3://b/p");
        assert_eq!(s3_endpoint(&u, &env(&[])), None);
        assert_eq!(s3_endpoint(&uri("s3://127.0.0.1:9/b/p"), &env(&[])).as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(s3_endpoint(&u, &env(&[("S3_ENDPOINT", "minio:9000")])).as_deref(), Some("https://minio:9000"));
        assert_eq!(
            s3_endpoint(&u, &env(&[("S3_ENDPOINT", "minio:9000"), ("S3_USE_HTTPS", "0")])).as_deref(),
            Some("http://minio:9000")
        );
        let both =
            env(&[("S3_ENDPOINT", "a:1"), ("AWS_ENDPOINT_URL", "http://b:2"), ("AWS_ENDPOINT_URL_S3", "http://c:3")]);
        assert_eq!(s3_endpoint(&u, &both).as_deref(), Some("http://c:3"));
    }

    #[test]
    fn credentials_never_show() {
        let env = Env::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        assert_eq!(
            env.redact("403: <AWSAccessKeyId>AKIDEXAMPLE</AWSAccessKeyId> for wJalrXUtnFEMI in eu-west-1"),
            "403: <AWSAccessKeyId><redacted></AWSAccessKeyId> for <redacted> in eu-west-1"
        );
        let shown = format!("{:?}", cfg(&[("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")], true));
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("wJalrXUtnFEMI"), "{shown}");
    }

    #[tokio::test]
    async fn lists_recursively_relative_to_the_prefix() {
        use object_store::memory::InMemory;
        use object_store::ObjectStoreExt;
        let store = InMemory::new();
        for key in ["repo/m/1/model.onnx", "repo/m/1/assets/a.txt", "repo2/x/1/model.onnx", "other"] {
            store.put(&key.into(), b"abc".to_vec().into()).await.unwrap();
        }
        let l = list(&store, &uri("s3://b/repo"), &Env::default()).await.unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["m/1/assets/a.txt", "m/1/model.onnx"]);
        assert_eq!(l["m/1/model.onnx"].key, "repo/m/1/model.onnx");
        assert_eq!(l["m/1/model.onnx"].size, 3);
        assert!(l["m/1/model.onnx"].e_tag.is_some());
        assert_eq!(list(&store, &uri("s3://b"), &Env::default()).await.unwrap().len(), 4);
    }
}
