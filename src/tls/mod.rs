//! TLS on every listener: rustls with the ring provider only, ALPN `h2` (gRPC) or `h2,http/1.1`
//! (REST), client certificates verified against `--tls-client-ca-file` (or `custom_ca` of
//! `--ssl_config_file`). Handshakes run in their own tasks with a timeout, so a slow or broken
//! client never holds up the accept loop. The server configs live in `ArcSwap`s that [`reload`]
//! replaces when the files change; each new connection takes the current one.
pub mod reload;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How a client certificate is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// Where the server's certificate, key and client CA come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
    /// TF Serving's `SSLConfig` text file with inline PEM.
    SslConfig(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub source: TlsSource,
    /// `None` = the default: `required` when a client CA is given, else `none`.
    pub client_auth: Option<ClientAuth>,
    pub handshake_timeout: Duration,
}

/// A verified client certificate, as tenants are matched against it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub sha256: [u8; 32],
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").field("uris", &self.uris).field("dns", &self.dns).finish_non_exhaustive()
    }
}

impl ClientCert {
    pub fn from_der(der: &[u8]) -> ClientCert {
        let sha256 = crate::tenancy::keys::Digest::of(der).0;
        let (mut uris, mut dns) = (Vec::new(), Vec::new());
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        x509_parser::extensions::GeneralName::URI(u) => uris.push((*u).to_string()),
                        x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                        _ => {}
                    }
                }
            }
        }
        ClientCert { sha256, uris, dns }
    }
}

/// What a connection tells the request handlers about its peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The verified client certificate (mTLS), if one was presented.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// The certificate, key and client CA, read and checked.
pub struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    client_auth: ClientAuth,
}

/// The raw bytes the material was read from (to notice changes).
pub type Fingerprint = Vec<Vec<u8>>;

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not a valid PEM certificate list: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate (-----BEGIN CERTIFICATE-----) found"));
    }
    Ok(certs)
}

fn key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The error never quotes the file: it holds a private key.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("{what}: no usable PEM private key: {e}"))
}

impl TlsSettings {
    /// Reads the files; returns the material and the raw bytes read.
    pub fn load(&self) -> Result<(Material, Fingerprint), String> {
        match &self.source {
            TlsSource::Files { cert, key: key_file, client_ca } => {
                let c = read(cert, "--tls-cert-file")?;
                let k = read(key_file, "--tls-key-file")?;
                let ca = client_ca.as_ref().map(|p| read(p, "--tls-client-ca-file")).transpose()?;
                let client_auth = match (self.client_auth, &ca) {
                    (Some(ClientAuth::None), _) => ClientAuth::None,
                    (Some(mode), Some(_)) => mode,
                    (Some(mode), None) => {
                        return Err(format!(
                            "--tls-client-auth {} needs --tls-client-ca-file",
                            if mode == ClientAuth::Optional { "optional" } else { "required" }
                        ))
                    }
                    (None, Some(_)) => ClientAuth::Required,
                    (None, None) => ClientAuth::None,
                };
                let material = Material {
                    certs: certs(&c, &format!("--tls-cert-file {}", cert.display()))?,
                    key: key(&k, &format!("--tls-key-file {}", key_file.display()))?,
                    client_ca: match (&ca, client_ca) {
                        (Some(b), Some(p)) => Some(certs(b, &format!("--tls-client-ca-file {}", p.display()))?),
                        _ => None,
                    },
                    client_auth,
                };
                let mut fp = vec![c, k];
                fp.extend(ca);
                Ok((material, fp))
            }
            TlsSource::SslConfig(path) => {
                let raw = read(path, "--ssl_config_file")?;
                let text = String::from_utf8_lossy(&raw);
                let what = format!("--ssl_config_file {}", path.display());
                let cfg: crate::proto::tensorflow::serving::SslConfig =
                    crate::repository::config::parse_text_message("tensorflow.serving.SSLConfig", &text)
                        .map_err(|e| format!("{what}: {e}"))?;
                let ca = (!cfg.custom_ca.is_empty())
                    .then(|| certs(cfg.custom_ca.as_bytes(), &format!("{what}: custom_ca")))
                    .transpose()?;
                let client_auth = match (cfg.client_verify, &ca, self.client_auth) {
                    (true, None, _) => return Err(format!("{what}: client_verify needs custom_ca")),
                    (_, _, Some(mode)) if ca.is_some() || mode == ClientAuth::None => mode,
                    (true, Some(_), _) => ClientAuth::Required,
                    (false, Some(_), _) => ClientAuth::Optional,
                    (false, None, _) => ClientAuth::None,
                };
                let material = Material {
                    certs: certs(cfg.server_cert.as_bytes(), &format!("{what}: server_cert"))?,
                    key: key(cfg.server_key.as_bytes(), &format!("{what}: server_key"))?,
                    client_ca: ca,
                    client_auth,
                };
                Ok((material, vec![raw]))
            }
        }
    }

    /// Where the material comes from, for messages.
    pub fn describe(&self) -> String {
        match &self.source {
            TlsSource::Files { cert, key, .. } => format!("{} and {}", cert.display(), key.display()),
            TlsSource::SslConfig(p) => p.display().to_string(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    /// A server config with these ALPN protocols. Checks that the key matches the certificate.
    pub fn server_config(&self, alpn: &[&[u8]], what: &str) -> Result<Arc<ServerConfig>, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{what}: {e}"))?;
        let builder = match (&self.client_ca, self.client_auth) {
            (Some(ca), mode) if mode != ClientAuth::None => {
                let mut roots = RootCertStore::empty();
                for c in ca {
                    roots.add(c.clone()).map_err(|e| format!("{what}: client CA certificate rejected: {e}"))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let v = if mode == ClientAuth::Optional { v.allow_unauthenticated() } else { v };
                builder.with_client_cert_verifier(v.build().map_err(|e| format!("{what}: client CA: {e}"))?)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| format!("{what}: the certificate and key do not make a usable server identity: {e}"))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }
}

pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
pub const ALPN_REST: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A listener's current server config.
pub type Shared = Arc<ArcSwap<ServerConfig>>;

/// An accepted connection: plain TCP, or TLS after a finished handshake.
pub enum Conn {
    Plain(TcpStream, PeerInfo),
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Conn {
    pub fn peer(&self) -> &PeerInfo {
        match self {
            Conn::Plain(_, p) | Conn::Tls(_, p) => p,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s, _) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s, _) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer().clone()
    }
}

/// Accepts on `listener` (TCP_NODELAY on), runs TLS handshakes (when `tls` is given) in their own
/// tasks with `handshake_timeout`, and hands finished connections over the returned channel. The
/// accept loop ends (closing the listener) when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Option<Shared>,
    handshake_timeout: Duration,
    what: &'static str,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel::<Conn>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!("{what}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => break,
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY on a {what} connection: {e}");
            }
            let peer = PeerInfo { remote: Some(remote), client_cert: None };
            match &tls {
                None => {
                    if tx.send(Conn::Plain(tcp, peer)).await.is_err() {
                        break;
                    }
                }
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let client_cert = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| Arc::new(ClientCert::from_der(c.as_ref())));
                                let _ = tx.send(Conn::Tls(Box::new(stream), PeerInfo { client_cert, ..peer })).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%remote, "{what}: TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%remote, "{what}: TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    rx
}

/// The accepted connections as an axum listener (for the REST server).
pub struct ConnListener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl ConnListener {
    pub fn new(rx: mpsc::Receiver<Conn>, local: SocketAddr) -> ConnListener {
        ConnListener { rx, local }
    }
}

impl axum::serve::Listener for ConnListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.rx.recv().await {
            Some(c) => {
                let p = c.peer().clone();
                (c, p)
            }
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo { remote: Some(self.local), client_cert: None })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, ConnListener>> for PeerInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, ConnListener>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}
