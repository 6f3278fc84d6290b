//! Cookie affinity: a browser session stays on one replica (Kestra's CSRF cookie verifies
//! only on the replica that set it, Kestra issue 18961).
//!
//! The cookie holds an opaque id, never an address: the first 16 bytes, in hex, of
//! SHA-256(key ‖ 0 ‖ address). The key comes from a file, or is a fixed constant, so that
//! several kestra-edge instances behind one L4 load balancer compute the same id for the
//! same replica and send a browser to it whichever instance it reaches.

use http::{header::COOKIE, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The default cookie name.
pub const DEFAULT_AFFINITY_COOKIE: &str = "kestra_edge_replica";

/// The key used when no key file is given: every instance agrees on it.
const DEFAULT_KEY: &[u8] = b"kestra-edge affinity v1";

/// Cookie affinity settings.
#[derive(Debug, Clone)]
pub struct Affinity {
    /// The cookie's name (default `kestra_edge_replica`).
    pub cookie: String,
    /// A file whose bytes (surrounding white space trimmed) key the hash; without one, a
    /// fixed key.
    pub key_file: Option<PathBuf>,
    /// The cookie's `Path`: the context path the browser sees (default `/`).
    pub path: String,
}

impl Default for Affinity {
    fn default() -> Self {
        Self {
            cookie: DEFAULT_AFFINITY_COOKIE.to_owned(),
            key_file: None,
            path: "/".to_owned(),
        }
    }
}

/// Affinity, validated: the key read, the name checked.
#[derive(Debug, Clone)]
pub(crate) struct AffinityKey {
    pub(crate) cookie: String,
    key: Vec<u8>,
    path: String,
}

impl AffinityKey {
    pub(crate) fn new(affinity: &Affinity) -> Result<Self, crate::BuildError> {
        let valid_name = !affinity.cookie.is_empty()
            && affinity
                .cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(crate::BuildError::AffinityCookie(affinity.cookie.clone()));
        }
        let valid_path = affinity.path.starts_with('/')
            && affinity
                .path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';');
        if !valid_path {
            return Err(crate::BuildError::AffinityPath(affinity.path.clone()));
        }
        let key = match &affinity.key_file {
            None => DEFAULT_KEY.to_vec(),
            Some(path) => {
                let bytes =
                    std::fs::read(path).map_err(|source| crate::BuildError::AffinityKey {
                        path: path.clone(),
                        source,
                    })?;
                let trimmed = bytes.trim_ascii();
                if trimmed.is_empty() {
                    return Err(crate::BuildError::AffinityKey {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "empty key"),
                    });
                }
                trimmed.to_vec()
            }
        };
        Ok(Self {
            cookie: affinity.cookie.clone(),
            key,
            path: affinity.path.clone(),
        })
    }

    /// The opaque id of the replica at `address`.
    pub(crate) fn id(&self, address: &str) -> String {
        let mut hash = Sha256::new();
        hash.update(&self.key);
        hash.update([0]);
        hash.update(address.as_bytes());
        hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The two `Set-Cookie` values for a replica: plain, and `Secure` for TLS clients.
    pub(crate) fn set_cookie(&self, id: &str) -> Option<[HeaderValue; 2]> {
        let plain = format!(
            "{}={id}; Path={}; HttpOnly; SameSite=Lax",
            self.cookie, self.path
        );
        let secure = format!("{plain}; Secure");
        Some([
            HeaderValue::from_str(&plain).ok()?,
            HeaderValue::from_str(&secure).ok()?,
        ])
    }
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 §5.4: pairs joined
/// by `; `; HTTP/2 may split them over several fields).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(COOKIE).iter().find_map(|field| {
        field.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_opaque_stable_and_keyed() {
        let a = AffinityKey::new(&Affinity::default()).unwrap();
        let b = AffinityKey::new(&Affinity::default()).unwrap();
        let id = a.id("10.0.0.5:8080");
        assert_eq!(id, b.id("10.0.0.5:8080"), "two instances agree");
        assert_eq!(id.len(), 32);
        assert!(!id.contains("10.0.0.5"));
        assert_ne!(id, a.id("10.0.0.6:8080"));

        let dir = std::env::temp_dir().join(format!("kestra-edge-affinity-{}", std::process::id()));
        std::fs::write(&dir, "secret\n").unwrap();
        let keyed = AffinityKey::new(&Affinity {
            key_file: Some(dir.clone()),
            ..Affinity::default()
        })
        .unwrap();
        assert_ne!(keyed.id("10.0.0.5:8080"), id);
        std::fs::write(&dir, "  \n").unwrap();
        let empty = AffinityKey::new(&Affinity {
            key_file: Some(dir.clone()),
            ..Affinity::default()
        });
        assert!(empty.is_err());
        std::fs::remove_file(&dir).unwrap();
        let missing = AffinityKey::new(&Affinity {
            key_file: Some(dir),
            ..Affinity::default()
        });
        assert!(missing.is_err());
    }

    #[test]
    fn set_cookie_carries_the_attributes() {
        let key = AffinityKey::new(&Affinity {
            path: "/kestra".to_owned(),
            ..Affinity::default()
        })
        .unwrap();
        let [plain, secure] = key.set_cookie("abc").unwrap();
        assert_eq!(
            plain,
            "kestra_edge_replica=abc; Path=/kestra; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            secure,
            "kestra_edge_replica=abc; Path=/kestra; HttpOnly; SameSite=Lax; Secure"
        );
        for bad in ["", "a b", "a;b", "a=b"] {
            let refused = AffinityKey::new(&Affinity {
                cookie: bad.to_owned(),
                ..Affinity::default()
            });
            assert!(refused.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_static("a=1; kestra_edge_replicaX=no"),
        );
        headers.append(
            COOKIE,
            HeaderValue::from_static("b=2;kestra_edge_replica=abc ; c=3"),
        );
        assert_eq!(cookie(&headers, "kestra_edge_replica"), Some(&b"abc"[..]));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
