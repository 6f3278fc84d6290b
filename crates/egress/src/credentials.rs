//! The proxy's users: `Proxy-Authorization: Basic …` checked against a file of
//! `user:password` lines, read again when it changes.

use base64::Engine as _;
use http::HeaderValue;
use kestra_edge_watch::WatchedFile;
use sha2::{Digest, Sha256};
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read egress credentials file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A line is not `user:password`, or the file has none.
    #[error("egress credentials file {path}: line {line} is not user:password (both not empty); blank lines and # comments are skipped, at least one entry is needed")]
    Format {
        /// The file.
        path: PathBuf,
        /// The first bad line (1-based; 0: no entry at all).
        line: usize,
    },
    /// The file's directory could not be watched.
    #[error("cannot watch egress credentials file {path}: {reason}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The users allowed through the proxy. Only SHA-256 digests of `user:password` are kept,
/// and a presented pair is compared with every one of them in constant time, so neither
/// timing nor a memory dump of this struct gives a password away. Never logged.
#[derive(Clone)]
pub struct ProxyCredentials {
    file: WatchedFile<Vec<[u8; 32]>, CredentialsError>,
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

impl ProxyCredentials {
    /// Reads `path`; an error names the file and line (start-up must fail on it).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, CredentialsError> {
        let file = WatchedFile::load(path, "egress credentials file", read)?;
        Ok(Self { file })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the file again (SIGHUP): a valid content is used from the next request on; an
    /// invalid one is refused (`Err`) and the last good users stay.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        self.file.reload()
    }

    /// Reloads whenever something changes in the file's directory (the directory, so that
    /// atomic renames and Kubernetes Secret symlink swaps are seen), for as long as any clone
    /// lives. Calling it again does nothing.
    pub fn watch(&self) -> Result<(), CredentialsError> {
        self.file.watch().map_err(|err| CredentialsError::Watch {
            path: err.path,
            reason: err.reason,
        })
    }

    /// Whether `Proxy-Authorization` holds `Basic base64(user:password)` of a listed user
    /// (RFC 9110 §11.7.2, RFC 7617; the scheme is case-insensitive).
    pub fn check(&self, value: Option<&HeaderValue>) -> bool {
        let Some(presented) = value.and_then(decode) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        let digests = self.file.current();
        // Every entry is compared, whatever matched, so the time does not say which.
        digests
            .iter()
            .fold(0u8, |found, known| found | u8::from(equal(known, &digest)))
            == 1
    }
}

/// `user:password` from `Basic <base64>`.
fn decode(value: &HeaderValue) -> Option<Vec<u8>> {
    let value = value.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(token.trim_ascii())
        .ok()
}

/// Constant-time equality of two digests: every byte is looked at.
fn equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn read(path: &Path) -> Result<Vec<[u8; 32]>, CredentialsError> {
    let text = std::fs::read(path).map_err(|err| CredentialsError::Read {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let mut digests = Vec::new();
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() || line.starts_with(b"#") {
            continue;
        }
        // Split at the first colon, as RFC 7617 §2 does: a password may hold colons.
        let colon = line.iter().position(|&b| b == b':');
        match colon {
            Some(colon) if colon > 0 && colon + 1 < line.len() => {
                digests.push(Sha256::digest(line).into());
            }
            _ => {
                return Err(CredentialsError::Format {
                    path: path.to_owned(),
                    line: index + 1,
                })
            }
        }
    }
    if digests.is_empty() {
        return Err(CredentialsError::Format {
            path: path.to_owned(),
            line: 0,
        });
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn basic(pair: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(pair);
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    #[test]
    fn users_are_checked_and_reloaded() {
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-egress-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        std::fs::write(&file, "# Kestra\nkestra:s3cr:et\r\n\nother:pw\n").unwrap();
        let users = ProxyCredentials::load(&file).unwrap();
        assert!(users.check(Some(&basic("kestra:s3cr:et"))));
        assert!(users.check(Some(&basic("other:pw"))));
        assert!(users.check(Some(
            &HeaderValue::from_str(&format!(
                "bAsIc  {}",
                base64::engine::general_purpose::STANDARD.encode("other:pw")
            ))
            .unwrap()
        )));
        for wrong in ["kestra:s3cr", "kestra:s3cr:et ", "other:PW", "", ":"] {
            assert!(!users.check(Some(&basic(wrong))), "{wrong:?} accepted");
        }
        assert!(!users.check(None));
        assert!(!users.check(Some(&HeaderValue::from_static("Bearer a2VzdHJh"))));
        assert!(!users.check(Some(&HeaderValue::from_static("Basic !!!"))));

        std::fs::write(&file, "new:one\n").unwrap();
        users.reload().unwrap();
        assert!(users.check(Some(&basic("new:one"))));
        assert!(!users.check(Some(&basic("other:pw"))));

        for bad in [
            "",
            "# only a comment\n",
            "user\n",
            ":pw\n",
            "user:\n",
            "a:b\nbroken\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(users.reload().is_err(), "{bad:?} accepted");
            assert!(users.check(Some(&basic("new:one"))), "last good users lost");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
