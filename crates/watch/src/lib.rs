//! A value read from a file, and read again when the file changes: the credentials files of
//! kestra-edge's forward authentication (Kestra's `user:password`) and of its egress proxy
//! (the proxy's users) share this.
//!
//! [`WatchedFile`] reads the file once when loaded (start-up fails on a bad file), again on
//! [`reload`](WatchedFile::reload) (SIGHUP), and, once [`watch`](WatchedFile::watch)ed,
//! whenever something changes in the file's directory. The directory rather than the file:
//! editors and `mv` replace the file by an atomic rename, and a Kubernetes Secret volume
//! swaps a `..data` symlink, neither of which a watch on the file itself sees. A burst of
//! events is read once, after [`SETTLE`] of quiet. A new content that does not parse is
//! refused with an error log line and the last good value stays in use.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kestra_edge_watch::WatchedFile;
//! # let dir = std::env::temp_dir().join(format!("kestra-edge-watch-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let path = dir.join("users");
//! std::fs::write(&path, "alice\nbob\n")?;
//! let users = WatchedFile::load(&path, "users file", |path| {
//!     std::fs::read_to_string(path).map(|text| text.lines().count())
//! })?;
//! assert_eq!(**users.current(), 2);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

use arc_swap::{ArcSwap, Guard};
use notify::{RecursiveMode, Watcher};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex, Weak},
    time::Duration,
};

/// How long a burst of file events must be quiet before the file is read again (an editor
/// or a Kubernetes Secret update fires several).
pub const SETTLE: Duration = Duration::from_millis(50);

/// The file's directory could not be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {reason}")]
pub struct WatchError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Reads the file into a value, or says why it cannot.
type Read<T, E> = fn(&Path) -> Result<T, E>;

/// A value read from a file, read again on [`reload`](Self::reload) and, once
/// [`watch`](Self::watch)ed, when the file changes. Clones share the value and the watch.
pub struct WatchedFile<T, E> {
    shared: Arc<Shared<T, E>>,
}

struct Shared<T, E> {
    path: PathBuf,
    /// What the log lines call the file ("Kestra credentials file").
    label: &'static str,
    read: Read<T, E>,
    value: ArcSwap<T>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl<T, E> Clone for WatchedFile<T, E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T, E> fmt::Debug for WatchedFile<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the value: these files hold secrets.
        f.debug_struct("WatchedFile")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl<T, E> WatchedFile<T, E>
where
    T: Send + Sync + 'static,
    E: fmt::Display + 'static,
{
    /// Reads `path` with `read`; its error is returned as it is (start-up must fail on it).
    /// `label` names the file in log lines.
    pub fn load(
        path: impl Into<PathBuf>,
        label: &'static str,
        read: Read<T, E>,
    ) -> Result<Self, E> {
        let path = path.into();
        let value = read(&path)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                label,
                read,
                value: ArcSwap::from_pointee(value),
                watcher: Mutex::new(None),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The value read last (a cheap guard: no lock, no reference count on the hot path).
    pub fn current(&self) -> Guard<Arc<T>> {
        self.shared.value.load()
    }

    /// Reads the file again: a valid new content is used from the next call to
    /// [`current`](Self::current) on; an invalid one is refused (`Err`) and the last good
    /// value stays.
    pub fn reload(&self) -> Result<(), E> {
        let value = (self.shared.read)(&self.shared.path)?;
        self.shared.value.store(Arc::new(value));
        Ok(())
    }

    /// Reloads whenever something changes in the file's directory, for as long as any clone
    /// lives. Calling it again does nothing.
    pub fn watch(&self) -> Result<(), WatchError>
    where
        E: Send + Sync,
    {
        let mut slot = self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let path = &self.shared.path;
        let error = |reason: String| WatchError {
            path: path.clone(),
            reason,
        };
        let (events, received) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(event);
        })
        .map_err(|err| error(err.to_string()))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|err| error(err.to_string()))?;
        // Weak: the thread must not keep the value (and with it the watcher) alive.
        let shared: Weak<Shared<T, E>> = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("kestra-edge-file-watch".to_owned())
            .spawn(move || {
                // Ends when the watcher, and with it the sender, is dropped.
                while received.recv().is_ok() {
                    while received.recv_timeout(SETTLE).is_ok() {}
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    match (shared.read)(&shared.path) {
                        Ok(value) => {
                            shared.value.store(Arc::new(value));
                            tracing::info!(path = %shared.path.display(), "{} reloaded", shared.label);
                        }
                        Err(err) => tracing::error!(
                            path = %shared.path.display(),
                            "refused the new {}, still using the last good one: {err}",
                            shared.label
                        ),
                    }
                }
            })
            .map_err(|err| error(err.to_string()))?;
        *slot = Some(watcher);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn read_number(path: &Path) -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim()
            .parse()
            .map_err(|_| format!("not a number: {text:?}"))
    }

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        condition()
    }

    #[test]
    fn a_bad_file_fails_the_load_and_a_bad_reload_keeps_the_last_good_value() {
        let dir = dir("reload");
        let path = dir.join("n");
        std::fs::write(&path, "x").unwrap();
        assert!(WatchedFile::load(&path, "number", read_number).is_err());
        std::fs::write(&path, "1").unwrap();
        let file = WatchedFile::load(&path, "number", read_number).unwrap();
        std::fs::write(&path, "oops").unwrap();
        assert!(file.reload().is_err());
        assert_eq!(**file.current(), 1);
        std::fs::write(&path, "424242").unwrap();
        file.reload().unwrap();
        assert_eq!(**file.current(), 424242);
        assert!(
            !format!("{file:?}").contains("424242"),
            "the value is never shown"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_atomic_rename_is_seen_by_the_watch_and_a_broken_one_is_refused() {
        let dir = dir("rename");
        let path = dir.join("n");
        std::fs::write(&path, "1").unwrap();
        let file = WatchedFile::load(&path, "number", read_number).unwrap();
        file.watch().unwrap();
        file.watch().unwrap();
        let replace = |text: &str| {
            let next = dir.join("n.next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &path).unwrap();
        };
        replace("7");
        assert!(eventually(|| **file.current() == 7));
        replace("broken");
        replace("8");
        assert!(eventually(|| **file.current() == 8));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
