//! Mapping an upstream's answer back under the prefix (strip mode).
//!
//! An upstream served at `/` answers with its own paths (`Location: /ui/`). The client only
//! knows the prefixed space, so those references get the prefix put back: what nginx's
//! `proxy_redirect` and `proxy_cookie_path` do.

use http::{
    header::{CONTENT_LOCATION, LOCATION, REFRESH, SET_COOKIE},
    HeaderMap, HeaderValue,
};

/// Where URLs in the answer may point to be mapped back.
#[derive(Debug)]
pub(crate) struct Origins<'a> {
    /// The prefix, e.g. `/kestra` (never `/`).
    pub(crate) prefix: &'a str,
    /// The upstream's `host:port`, if known: URLs to it become prefixed absolute paths, so no
    /// internal address reaches the client.
    pub(crate) upstream: Option<&'a str>,
    /// The `Host` the client used: URLs to it keep their origin and get the prefix.
    pub(crate) public_host: Option<&'a [u8]>,
}

/// Rewrites `Location`, `Content-Location`, `Refresh` and every `Set-Cookie` `Path`.
pub(crate) fn rewrite_response_headers(headers: &mut HeaderMap, origins: &Origins<'_>) {
    for name in [LOCATION, CONTENT_LOCATION] {
        if let Some(value) = headers.get(&name) {
            if let Some(new) = rewrite_url(value.as_bytes(), origins) {
                headers.insert(name, new);
            }
        }
    }
    if let Some(value) = headers.get(REFRESH) {
        if let Some(new) = rewrite_refresh(value.as_bytes(), origins) {
            headers.insert(REFRESH, new);
        }
    }
    if headers.contains_key(SET_COOKIE) {
        let cookies: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| rewrite_cookie_path(v.as_bytes(), origins.prefix).unwrap_or_else(|| v.clone()))
            .collect();
        headers.remove(SET_COOKIE);
        for cookie in cookies {
            headers.append(SET_COOKIE, cookie);
        }
    }
}

/// A URL reference mapped under the prefix, or `None` to leave it as it is.
///
/// Absolute paths (`/ui/`) get the prefix. Absolute URLs to the upstream become prefixed
/// absolute paths; to the public host, keep their origin with the prefixed path. Relative
/// references already resolve under the prefix; other origins are not ours.
pub(crate) fn rewrite_url(value: &[u8], origins: &Origins<'_>) -> Option<HeaderValue> {
    let prefixed = |path: &[u8]| -> Vec<u8> {
        let mut out = Vec::with_capacity(origins.prefix.len() + path.len() + 1);
        out.extend_from_slice(origins.prefix.as_bytes());
        if !path.starts_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        out
    };
    if value.starts_with(b"/") && !value.starts_with(b"//") {
        return HeaderValue::from_bytes(&prefixed(value)).ok();
    }
    let (scheme_len, rest) = if let Some(rest) = strip_prefix_ignore_case(value, b"http://") {
        (7, rest)
    } else {
        (8, strip_prefix_ignore_case(value, b"https://")?)
    };
    let authority_end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if origins
        .upstream
        .is_some_and(|up| authority.eq_ignore_ascii_case(up.as_bytes()))
    {
        return HeaderValue::from_bytes(&prefixed(path)).ok();
    }
    if origins
        .public_host
        .is_some_and(|host| authority.eq_ignore_ascii_case(host))
    {
        let mut out = value[..scheme_len + authority.len()].to_vec();
        out.extend_from_slice(&prefixed(path));
        return HeaderValue::from_bytes(&out).ok();
    }
    None
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

/// `Refresh: 5; url=/ui/` with its URL mapped (WHATWG HTML §7.11.1, "shared declarative
/// refresh steps": delay, `;` or `,`, `url` in any case, `=`, the URL optionally quoted).
fn rewrite_refresh(value: &[u8], origins: &Origins<'_>) -> Option<HeaderValue> {
    let skip_space = |mut i: usize| {
        while matches!(value.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    // The delay, then `;` or `,`, then `url`, `=`, each with optional white space.
    let separator = value.iter().position(|b| matches!(b, b';' | b','))?;
    let key = skip_space(separator + 1);
    if !value.get(key..key + 3)?.eq_ignore_ascii_case(b"url") {
        return None;
    }
    let equals = skip_space(key + 3);
    if value.get(equals) != Some(&b'=') {
        return None;
    }
    let start = skip_space(equals + 1);
    let quote = value
        .get(start)
        .copied()
        .filter(|q| matches!(q, b'"' | b'\''));
    let url_start = start + usize::from(quote.is_some());
    let url_end = match quote {
        Some(q) => value[url_start..]
            .iter()
            .position(|&b| b == q)
            .map_or(value.len(), |p| url_start + p),
        None => value.len(),
    };
    let url = rewrite_url(&value[url_start..url_end], origins)?;
    let mut out = value[..url_start].to_vec();
    out.extend_from_slice(url.as_bytes());
    out.extend_from_slice(&value[url_end..]);
    HeaderValue::from_bytes(&out).ok()
}

/// A `Set-Cookie` whose `Path` attribute is an absolute path, mapped under the prefix
/// (RFC 6265 §5.2.4; `Path=/` becomes `Path=/kestra`, which still covers `/kestra/…`).
fn rewrite_cookie_path(value: &[u8], prefix: &str) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(value.len() + prefix.len());
    let mut changed = false;
    for (i, attribute) in value.split(|&b| b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        let trimmed_start = attribute
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(attribute.len());
        let (space, attr) = attribute.split_at(trimmed_start);
        let path = (i > 0)
            .then(|| strip_prefix_ignore_case(attr, b"path="))
            .flatten()
            .filter(|p| p.starts_with(b"/"));
        match path {
            Some(path) => {
                out.extend_from_slice(space);
                out.extend_from_slice(&attr[..5]);
                out.extend_from_slice(prefix.as_bytes());
                if path != b"/" {
                    out.extend_from_slice(path);
                }
                changed = true;
            }
            None => out.extend_from_slice(attribute),
        }
    }
    if changed {
        HeaderValue::from_bytes(&out).ok()
    } else {
        None
    }
}

/// Whether a `Location` of a keep-mode answer doubles the prefix (`/kestra/kestra/…`): the
/// context path is configured both in Kestra and in a prefix in front (Kestra issue 2630).
pub(crate) fn doubles_prefix(location: &[u8], prefix: &str) -> bool {
    let path = match location.iter().position(|&b| b == b':') {
        // An absolute URL: look at its path.
        Some(colon) if location[colon..].starts_with(b"://") => {
            let rest = &location[colon + 3..];
            &rest[rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())..]
        }
        _ => location,
    };
    let prefix = prefix.as_bytes();
    path.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(prefix))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Origins<'static> {
        Origins {
            prefix: "/kestra",
            upstream: Some("10.0.0.5:8080"),
            public_host: Some(b"kestra.example.com"),
        }
    }

    #[test]
    fn urls_are_mapped_under_the_prefix() {
        let cases: [(&str, Option<&str>); 14] = [
            ("/", Some("/kestra/")),
            ("/ui/", Some("/kestra/ui/")),
            ("/ui/?a=1#top", Some("/kestra/ui/?a=1#top")),
            ("http://10.0.0.5:8080/ui/", Some("/kestra/ui/")),
            ("HTTP://10.0.0.5:8080", Some("/kestra/")),
            ("http://10.0.0.5:8080?x=1", Some("/kestra/?x=1")),
            (
                "https://kestra.example.com/ui/",
                Some("https://kestra.example.com/kestra/ui/"),
            ),
            (
                "http://KESTRA.example.com/a",
                Some("http://KESTRA.example.com/kestra/a"),
            ),
            ("https://other.example/ui/", None),
            ("//evil.example/x", None),
            ("ui/", None),
            ("../x", None),
            ("mailto:admin@kestra.example.com", None),
            ("", None),
        ];
        for (input, expected) in cases {
            let got = rewrite_url(input.as_bytes(), &origins());
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn response_headers_are_rewritten() {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, HeaderValue::from_static("/ui/"));
        headers.insert(CONTENT_LOCATION, HeaderValue::from_static("/api/v1/x"));
        headers.insert(REFRESH, HeaderValue::from_static("5; URL='/ui/login'"));
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("SESSION=a; Path=/; HttpOnly"),
        );
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("B=b; path=/api;Secure"),
        );
        headers.append(SET_COOKIE, HeaderValue::from_static("C=c; Max-Age=5"));
        headers.append(SET_COOKIE, HeaderValue::from_static("Path=/x; D=d"));
        rewrite_response_headers(&mut headers, &origins());
        assert_eq!(headers[LOCATION], "/kestra/ui/");
        assert_eq!(headers[CONTENT_LOCATION], "/kestra/api/v1/x");
        assert_eq!(headers[REFRESH], "5; URL='/kestra/ui/login'");
        let cookies: Vec<&str> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            cookies,
            [
                "SESSION=a; Path=/kestra; HttpOnly",
                "B=b; path=/kestra/api;Secure",
                "C=c; Max-Age=5",
                // The first pair is the cookie itself, never an attribute.
                "Path=/x; D=d",
            ]
        );
    }

    #[test]
    fn refresh_forms() {
        let cases = [
            ("0;url=/ui/", Some("0;url=/kestra/ui/")),
            ("0; url = /ui/", Some("0; url = /kestra/ui/")),
            ("0, URL=/ui/", Some("0, URL=/kestra/ui/")),
            ("0; urlx=/ui/", None),
            ("3;URL=\"/a\"", Some("3;URL=\"/kestra/a\"")),
            ("3", None),
            ("3; url=https://other.example/", None),
        ];
        for (input, expected) in cases {
            let got = rewrite_refresh(input.as_bytes(), &origins());
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn doubled_prefixes_are_recognised() {
        for yes in [
            "/kestra/kestra",
            "/kestra/kestra/ui/",
            "http://h/kestra/kestra/ui/",
        ] {
            assert!(doubles_prefix(yes.as_bytes(), "/kestra"), "{yes}");
        }
        for no in [
            "/kestra/ui/",
            "/kestra/kestraX",
            "/kestra",
            "http://h/kestra/ui/",
        ] {
            assert!(!doubles_prefix(no.as_bytes(), "/kestra"), "{no}");
        }
    }
}
