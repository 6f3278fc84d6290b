//! Request targets a forward proxy accepts: `CONNECT host:port` (authority-form) and
//! `GET http://host[:port]/path` (absolute-form).

use http::{Method, Uri};
use std::net::IpAddr;

/// Where a client asked to go: a lower-case name (or an IP literal, without brackets) and a
/// port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The host as an address, when it is an IP literal (not resolved).
    pub(crate) ip: Option<IpAddr>,
}

/// What a request asks the proxy to do.
#[derive(Debug)]
pub(crate) enum Kind {
    /// Open a tunnel (`CONNECT`).
    Tunnel(Target),
    /// Forward a plain-HTTP request; the `Uri` is the origin-form to send on.
    Forward(Target, Uri),
}

impl Target {
    /// `host:port` with a port required (RFC 9110 §9.3.6: "the request-target consists of
    /// only the host and port number of the tunnel destination").
    pub(crate) fn authority(text: &str) -> Option<Self> {
        match Self::split_host_port(text)? {
            (host, Some(port)) => Self::new(host, port),
            (_, None) => None,
        }
    }

    fn new(host: &str, port: u16) -> Option<Self> {
        if port == 0 || host.is_empty() {
            return None;
        }
        let ip = host.parse::<IpAddr>().ok();
        let name_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if ip.is_none() && !name_ok {
            return None;
        }
        Some(Self {
            host: host.to_ascii_lowercase(),
            port,
            ip,
        })
    }

    /// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for a bad port or shape.
    pub(crate) fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok()?)
            }
            Some(_) => return None,
            None => None,
        };
        Some((host, port))
    }
}

/// Reads the request-target; `None` is a malformed one (400).
pub(crate) fn classify(method: &Method, uri: &Uri) -> Option<Kind> {
    if method == Method::CONNECT {
        if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return None;
        }
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        return Target::authority(authority.as_str()).map(Kind::Tunnel);
    }
    // Absolute-form (RFC 9112 §3.2.2); only http: an https destination takes CONNECT.
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let (host, port) = Target::split_host_port(authority.as_str())?;
    let target = Target::new(host, port.unwrap_or(80))?;
    let origin = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let origin = if origin.is_empty() { "/" } else { origin };
    let origin = Uri::try_from(origin).ok()?;
    Some(Kind::Forward(target, origin))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn connect_targets() {
        let ok = [
            ("api.kestra.io:443", "api.kestra.io", 443),
            ("API.Kestra.IO:8443", "api.kestra.io", 8443),
            ("[::1]:443", "::1", 443),
            ("10.0.0.1:22", "10.0.0.1", 22),
        ];
        for (text, host, port) in ok {
            let uri: Uri = text.parse().unwrap();
            match classify(&Method::CONNECT, &uri) {
                Some(Kind::Tunnel(t)) => assert_eq!((t.host.as_str(), t.port), (host, port)),
                other => panic!("{text}: {other:?}"),
            }
        }
        for bad in [
            "api.kestra.io",
            "api.kestra.io:0",
            "user@host:443",
            "http://host:443/",
            "host:443/x",
        ] {
            let Ok(uri) = bad.parse::<Uri>() else {
                continue;
            };
            assert!(classify(&Method::CONNECT, &uri).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn absolute_form_targets() {
        let uri: Uri = "http://Example.COM/a/b?c=d".parse().unwrap();
        match classify(&Method::GET, &uri) {
            Some(Kind::Forward(t, origin)) => {
                assert_eq!((t.host.as_str(), t.port), ("example.com", 80));
                assert_eq!(origin, "/a/b?c=d");
            }
            other => panic!("{other:?}"),
        }
        let uri: Uri = "http://[::1]:8080".parse().unwrap();
        match classify(&Method::POST, &uri) {
            Some(Kind::Forward(t, origin)) => {
                assert_eq!(
                    (t.host.as_str(), t.port, t.ip),
                    ("::1", 8080, Some("::1".parse().unwrap()))
                );
                assert_eq!(origin, "/");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "/relative",
            "https://example.com/",
            "http://u:p@example.com/",
            "ftp://x/",
        ] {
            let uri: Uri = bad.parse().unwrap();
            assert!(classify(&Method::GET, &uri).is_none(), "{bad} accepted");
        }
    }
}
