//! Kestra's own basic-auth credentials, presented upstream on behalf of every signed-in user.

use base64::Engine as _;
use http::{
    header::{AUTHORIZATION, COOKIE, SET_COOKIE},
    HeaderMap, HeaderValue,
};
use kestra_edge_watch::WatchedFile;
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// The cookie Kestra's webserver reads first, before `Authorization` (`BasicAuthService.
/// BASIC_AUTH_COOKIE_NAME`); its value is `base64(user:password)` (`BasicAuthService.encodeToken`).
pub const BASIC_AUTH_COOKIE: &str = "BASIC_AUTH";

/// The non-HttpOnly cookie Kestra's login sets beside [`BASIC_AUTH_COOKIE`] and its UI reads
/// to skip the login page (`isLoggedIn()` looks for `kestraBasicAuthenticated=true` in
/// `document.cookie`). It carries no credentials.
pub const FLAG_COOKIE: &str = "kestraBasicAuthenticated";

/// The flag cookie as Kestra's `MiscController` sets it: `Path=/`, not HttpOnly,
/// `SameSite=Strict`, `Secure` when the request was HTTPS, no expiry (a session cookie).
const FLAG_SET_COOKIE: &str = "kestraBasicAuthenticated=true; Path=/; SameSite=Strict";
const FLAG_SET_COOKIE_SECURE: &str =
    "kestraBasicAuthenticated=true; Path=/; SameSite=Strict; Secure";

/// A credentials file [`KestraCredentials`] could not use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read Kestra credentials file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file does not hold `user:password`.
    #[error("Kestra credentials file {path} must hold one line user:password (user and password not empty)")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The file's directory could not be watched.
    #[error("cannot watch Kestra credentials file {path}: {reason}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Kestra's basic-auth credentials, read from a file holding `user:password` (a file, so the
/// secret never shows in `ps`), and read again when it changes.
///
/// Upstream, each authenticated request gets `Authorization: Basic base64(user:password)`
/// instead of whatever the client sent, and, when the client sent cookies (a browser), the
/// `BASIC_AUTH` cookie with the same value in place of any `BASIC_AUTH` cookie of the
/// client's. Toward the client, every `Set-Cookie: BASIC_AUTH=…` from Kestra is dropped, and
/// the browser gets only the [`FLAG_COOKIE`] (`true`, no secret). See the [crate
/// docs](crate) for what Kestra's source says about both cookies.
#[derive(Clone)]
pub struct KestraCredentials {
    file: WatchedFile<Secret, CredentialsError>,
}

/// What is sent upstream, computed once per file content.
struct Secret {
    /// `Basic base64(user:password)`, marked sensitive.
    authorization: HeaderValue,
    /// `BASIC_AUTH=base64(user:password)`.
    cookie: Vec<u8>,
}

impl fmt::Debug for KestraCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KestraCredentials")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

impl KestraCredentials {
    /// Reads `path`; an error names the file (start-up must fail on it).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, CredentialsError> {
        let file = WatchedFile::load(path, "Kestra credentials file", Secret::read)?;
        Ok(Self { file })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the file again: a valid new content is used from the next request on; an
    /// invalid one is refused (`Err`) and the last good credentials stay.
    pub fn reload(&self) -> Result<(), CredentialsError> {
        self.file.reload()
    }

    /// Reloads whenever something changes in the file's directory (the directory, so that
    /// atomic renames and Kubernetes Secret symlink swaps are seen), for as long as any clone
    /// of these credentials lives. Calling it again does nothing.
    pub fn watch(&self) -> Result<(), CredentialsError> {
        self.file.watch().map_err(|err| CredentialsError::Watch {
            path: err.path,
            reason: err.reason,
        })
    }

    /// Presents the credentials upstream; whether the client lacks the flag cookie.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) -> bool {
        let secret = self.file.current();
        headers.insert(AUTHORIZATION, secret.authorization.clone());
        let mut has_flag = false;
        let mut cookies: Vec<u8> = Vec::new();
        let mut any = false;
        for line in headers.get_all(COOKIE) {
            any = true;
            for pair in line.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                if pair.is_empty() {
                    continue;
                }
                has_flag |= pair == b"kestraBasicAuthenticated=true";
                if cookie_name(pair) == BASIC_AUTH_COOKIE.as_bytes() {
                    continue;
                }
                if cookies.is_empty() {
                    cookies.reserve(line.len() + secret.cookie.len() + 2);
                } else {
                    cookies.extend_from_slice(b"; ");
                }
                cookies.extend_from_slice(pair);
            }
        }
        // Only a client that sends cookies (a browser) gets the cookie: with it, Kestra's
        // CsrfTokenFilter asks POSTs for a CSRF token, which the UI sends and a script
        // authenticated by a bearer token at the auth service does not.
        if any {
            if !cookies.is_empty() {
                cookies.extend_from_slice(b"; ");
            }
            cookies.extend_from_slice(&secret.cookie);
            match HeaderValue::from_bytes(&cookies) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    headers.insert(COOKIE, value);
                }
                // Unreachable (the pieces were valid header bytes); never forward the
                // client's BASIC_AUTH then.
                Err(_) => {
                    headers.remove(COOKIE);
                }
            }
        }
        !has_flag
    }
}

/// Drops every `Set-Cookie` that would put `BASIC_AUTH` in the browser; adds the flag cookie
/// when `flag` says the client lacks it and Kestra is not setting or clearing it itself.
pub(crate) fn protect_response(headers: &mut HeaderMap, flag: Option<Secure>) {
    let mut sets_flag = false;
    let mut sets_secret = false;
    for value in headers.get_all(SET_COOKIE) {
        let name = cookie_name(value.as_bytes());
        sets_secret |= name == BASIC_AUTH_COOKIE.as_bytes();
        sets_flag |= name == FLAG_COOKIE.as_bytes();
    }
    if sets_secret {
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| cookie_name(v.as_bytes()) != BASIC_AUTH_COOKIE.as_bytes())
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for value in kept {
            headers.append(SET_COOKIE, value);
        }
    }
    if let (Some(secure), false) = (flag, sets_flag) {
        let text = if secure.0 {
            FLAG_SET_COOKIE_SECURE
        } else {
            FLAG_SET_COOKIE
        };
        headers.append(SET_COOKIE, HeaderValue::from_static(text));
    }
}

/// Whether the flag cookie gets `Secure` (the client used HTTPS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Secure(pub(crate) bool);

/// The name of a `name=value` cookie pair or `Set-Cookie` value, trimmed.
fn cookie_name(pair: &[u8]) -> &[u8] {
    let end = pair
        .iter()
        .position(|&b| b == b'=' || b == b';')
        .unwrap_or(pair.len());
    pair[..end].trim_ascii()
}

impl Secret {
    fn read(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read(path).map_err(|err| CredentialsError::Read {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        let format = || CredentialsError::Format {
            path: path.to_owned(),
        };
        // One line; a final newline (and a Windows CR) is not part of the password.
        let line = text.strip_suffix(b"\n").unwrap_or(&text);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\n') {
            return Err(format());
        }
        // Kestra splits at the first colon too (`BasicAuthService.isAuthenticated`).
        let colon = line.iter().position(|&b| b == b':').ok_or_else(format)?;
        if colon == 0 || colon + 1 == line.len() {
            return Err(format());
        }
        let token = base64(line);
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| format())?;
        authorization.set_sensitive(true);
        let cookie = format!("{BASIC_AUTH_COOKIE}={token}").into_bytes();
        Ok(Self {
            authorization,
            cookie,
        })
    }
}

/// Standard base64 with padding (RFC 4648 §4), as Java's `Base64.getEncoder()` writes it.
fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            (
                "admin@kestra.io:Kestra123",
                "YWRtaW5Aa2VzdHJhLmlvOktlc3RyYTEyMw==",
            ),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn cookie_rewrite_replaces_the_clients_basic_auth() {
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        std::fs::write(&file, "admin@kestra.io:Kestra123\n").unwrap();
        let credentials = KestraCredentials::load(&file).unwrap();

        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "a=1; BASIC_AUTH=Zm9vOmJhcg==".parse().unwrap());
        headers.append(COOKIE, "kestraBasicAuthenticated=true".parse().unwrap());
        headers.insert(AUTHORIZATION, "Bearer client".parse().unwrap());
        assert!(!credentials.apply(&mut headers));
        assert_eq!(
            headers[COOKIE],
            "a=1; kestraBasicAuthenticated=true; BASIC_AUTH=YWRtaW5Aa2VzdHJhLmlvOktlc3RyYTEyMw=="
        );
        assert_eq!(
            headers[AUTHORIZATION],
            "Basic YWRtaW5Aa2VzdHJhLmlvOktlc3RyYTEyMw=="
        );

        // No cookies: the header only, and the flag is missing.
        let mut headers = HeaderMap::new();
        assert!(credentials.apply(&mut headers));
        assert!(headers.get(COOKIE).is_none());

        for bad in ["", "user", ":pw", "user:", "a:b\nc:d\n"] {
            std::fs::write(&file, bad).unwrap();
            assert!(credentials.reload().is_err(), "{bad:?} accepted");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn responses_never_set_basic_auth() {
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            "BASIC_AUTH=c2VjcmV0; Path=/; HttpOnly".parse().unwrap(),
        );
        headers.append(SET_COOKIE, "other=1".parse().unwrap());
        protect_response(&mut headers, Some(Secure(true)));
        let values: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            values,
            [
                "other=1",
                "kestraBasicAuthenticated=true; Path=/; SameSite=Strict; Secure"
            ]
        );

        // Kestra clearing the flag (its logout) is left alone.
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            "kestraBasicAuthenticated=; Max-Age=0".parse().unwrap(),
        );
        protect_response(&mut headers, Some(Secure(false)));
        assert_eq!(headers.get_all(SET_COOKIE).iter().count(), 1);
    }
}
