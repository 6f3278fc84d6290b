//! The certificate every new handshake gets, and reloading it without a restart.

use crate::certs::{PemPair, TlsError};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::{
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

/// How long file events are gathered before a reload: an editor or `kubectl` writes several
/// files and renames in a row, and the pair is read once they have settled.
const SETTLE: Duration = Duration::from_millis(100);

/// The certificate handed to each new handshake. Swapping it changes what the next
/// handshake gets; connections already open keep theirs.
#[derive(Debug, Clone)]
pub struct CertStore {
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl CertStore {
    /// A store serving `certified`.
    pub fn new(certified: Arc<CertifiedKey>) -> Self {
        Self {
            current: Arc::new(ArcSwap::new(certified)),
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Serves `certified` from the next handshake on.
    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        self.current.store(certified);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A certificate and key read from PEM files, reloadable on demand ([`CertReloader::reload`],
/// e.g. on SIGHUP) and when the files change ([`CertReloader::watch`]).
///
/// A new pair that is broken or mismatched is refused with an error log line, and the last
/// good pair keeps being served.
#[derive(Debug)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    store: CertStore,
    last: Mutex<PemPair>,
}

impl CertReloader {
    /// Loads the pair once; an error names the file at fault (start-up must fail on it).
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let pem = PemPair::read(&cert, &key)?;
        let certified = pem.certified(&cert, &key)?;
        Ok(Self {
            store: CertStore::new(Arc::new(certified)),
            cert,
            key,
            last: Mutex::new(pem),
        })
    }

    /// The store the TLS acceptor resolves from.
    pub fn store(&self) -> CertStore {
        self.store.clone()
    }

    /// Reads the files again. A valid new pair is served from the next handshake on
    /// (`Ok(true)`); unchanged files change nothing (`Ok(false)`); a broken or mismatched
    /// pair is refused (`Err`) and the last good pair stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pem = PemPair::read(&self.cert, &self.key)?;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *last == pem {
            return Ok(false);
        }
        let certified = pem.certified(&self.cert, &self.key)?;
        self.store.replace(Arc::new(certified));
        *last = pem;
        Ok(true)
    }

    /// [`reload`](Self::reload), with the outcome logged: what SIGHUP and file changes do.
    pub fn reload_and_log(&self, trigger: &str) {
        match self.reload() {
            Ok(true) => tracing::info!(
                cert = %self.cert.display(),
                trigger,
                "TLS certificate reloaded: new handshakes use it"
            ),
            Ok(false) => tracing::debug!(trigger, "TLS certificate files unchanged"),
            Err(err) => tracing::error!(
                trigger,
                "refused the new TLS certificate, still serving the last good one: {err}"
            ),
        }
    }

    /// Reloads whenever something changes in the directories of the certificate and the key.
    ///
    /// The directories, not the files, are watched: an atomic rename over the file and a
    /// Kubernetes Secret update (which swaps the `..data` symlink the files point through)
    /// both replace the file, and a watch on the old file would see neither. The watch stops
    /// when the returned [`CertWatch`] is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<CertWatch, TlsError> {
        let (events, received) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })
        .map_err(|err| watch_error(&self.cert, &err))?;
        let mut dirs: Vec<PathBuf> = [&self.cert, &self.key]
            .into_iter()
            .map(|file| parent_dir(file))
            .collect();
        dirs.dedup();
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|err| watch_error(dir, &err))?;
        }
        let reloader = Arc::clone(self);
        std::thread::Builder::new()
            .name("kestra-edge-cert-watch".to_owned())
            .spawn(move || {
                // Ends when the watcher (and with it the sender) is dropped.
                while let Ok(first) = received.recv() {
                    if let Err(err) = first {
                        tracing::warn!(error = %err, "certificate watch error");
                    }
                    while received.recv_timeout(SETTLE).is_ok() {}
                    reloader.reload_and_log("file change");
                }
            })
            .map_err(|err| TlsError::Watch {
                path: dirs.first().cloned().unwrap_or_default(),
                reason: err.to_string(),
            })?;
        Ok(CertWatch { _watcher: watcher })
    }
}

/// Keeps a [`CertReloader::watch`] running; dropping it stops the watch.
#[derive(Debug)]
pub struct CertWatch {
    _watcher: notify::RecommendedWatcher,
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn watch_error(path: &Path, err: &notify::Error) -> TlsError {
    TlsError::Watch {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}
