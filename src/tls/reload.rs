//! Certificate rotation: the files are re-read every few seconds (Kubernetes swaps a secret's
//! files in place); changed, valid files replace the server configs for new connections, while
//! open connections keep theirs. A bad new file is logged and the old configs stay.
use super::{Shared, TlsSettings, ALPN_GRPC, ALPN_REST};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

/// How often the files are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The server configs of every listener, built from the same files.
pub struct TlsState {
    settings: TlsSettings,
    pub grpc: Shared,
    pub rest: Shared,
    fingerprint: std::sync::Mutex<super::Fingerprint>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl TlsState {
    /// Reads and checks everything now: any problem is a start-up failure naming the file.
    pub fn start(settings: TlsSettings) -> Result<Arc<TlsState>, String> {
        let (m, fingerprint) = settings.load()?;
        let what = settings.describe();
        let grpc = m.server_config(ALPN_GRPC, &what)?;
        let rest = m.server_config(ALPN_REST, &what)?;
        Ok(Arc::new(TlsState {
            settings,
            grpc: Arc::new(ArcSwap::new(grpc)),
            rest: Arc::new(ArcSwap::new(rest)),
            fingerprint: std::sync::Mutex::new(fingerprint),
        }))
    }

    /// Re-reads the files; swaps in new configs if they changed and are valid.
    pub fn check(&self) {
        let loaded = self.settings.load();
        let mut fp = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
        let (m, new_fp) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("TLS files could not be re-read: {e}; keeping the current certificate");
                return;
            }
        };
        if *fp == new_fp {
            return;
        }
        let what = self.settings.describe();
        match (m.server_config(ALPN_GRPC, &what), m.server_config(ALPN_REST, &what)) {
            (Ok(g), Ok(r)) => {
                self.grpc.store(g);
                self.rest.store(r);
                *fp = new_fp;
                tracing::info!(files = %what, "TLS certificate files changed; new connections use them");
            }
            (Err(e), _) | (_, Err(e)) => {
                // Remember the bad files so the error is logged once per change.
                *fp = new_fp;
                tracing::error!("new TLS files rejected: {e}; keeping the current certificate");
            }
        }
    }

    /// Checks the files every [`CHECK_EVERY`] until aborted.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let this = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || this.check()).await;
        }
    }
}
