//! The `Forwarded` header (RFC 7239) and the addresses in `X-Forwarded-For`.

use std::{
    fmt::{self, Write as _},
    net::{IpAddr, Ipv6Addr},
};

/// Parses one `X-Forwarded-For` item or `for=` node into an address.
///
/// Accepts `198.51.100.9`, `198.51.100.9:8080`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`, `fe80::1%eth0` (the zone is dropped), each optionally quoted.
/// `unknown`, obfuscated identifiers (`_hidden`, RFC 7239 §6.3), empty items and garbage
/// give `None`. IPv4-mapped IPv6 addresses become IPv4.
pub fn parse_node(item: &str) -> Option<IpAddr> {
    let item = item.trim();
    let item = item
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .unwrap_or(item);
    let ip = if let Some(rest) = item.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        IpAddr::V6(parse_v6(addr)?)
    } else if let Ok(ip) = item.parse::<IpAddr>() {
        ip
    } else if let Some((addr, port)) = item.rsplit_once(':').filter(|(a, _)| !a.contains(':')) {
        // `v4:port`
        if !valid_port(port) {
            return None;
        }
        IpAddr::V4(addr.parse().ok()?)
    } else {
        IpAddr::V6(parse_v6(item)?)
    };
    Some(ip.to_canonical())
}

/// An IPv6 address, its zone (`%eth0`) dropped.
fn parse_v6(text: &str) -> Option<Ipv6Addr> {
    let addr = text.split_once('%').map_or(text, |(addr, _zone)| addr);
    addr.parse().ok()
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// One element of a `Forwarded` header: the parameters one proxy adds (RFC 7239 §4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedElement {
    /// `for=`: the client of that hop.
    pub for_node: Option<IpAddr>,
    /// `proto=`: the scheme the hop received (`http`, `https`).
    pub proto: Option<String>,
    /// `host=`: the `Host` the hop received.
    pub host: Option<String>,
}

impl ForwardedElement {
    /// Parses one element (`for=192.0.2.60;proto=http;by=203.0.113.43`).
    ///
    /// Parameter names are case-insensitive; values are tokens or quoted strings (RFC 7239
    /// §4); unknown parameters (`by=`, extensions) are ignored; a `for=` that is no address
    /// (`unknown`, `_hidden`) is absent. `None` when the element is malformed.
    pub fn parse(element: &str) -> Option<Self> {
        let mut parsed = Self::default();
        for pair in kestra_edge_headers::split_unquoted(element.as_bytes(), b';') {
            // Split at an ASCII byte, so each piece is UTF-8 too.
            let pair = std::str::from_utf8(pair).ok()?.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=')?;
            let value = unquote(value.trim())?;
            match name.trim().to_ascii_lowercase().as_str() {
                "for" => parsed.for_node = parse_node(&value),
                "proto" => parsed.proto = Some(value.to_ascii_lowercase()),
                "host" => parsed.host = Some(value),
                _ => {}
            }
        }
        Some(parsed)
    }
}

impl fmt::Display for ForwardedElement {
    /// Formats per RFC 7239 §4 and §6: an IPv6 `for` is bracketed and quoted
    /// (`for="[2001:db8::1]"`); any value that is not a token is quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut pair = |f: &mut fmt::Formatter<'_>, name: &str, value: &str| -> fmt::Result {
            if !first {
                f.write_char(';')?;
            }
            first = false;
            write!(f, "{name}=")?;
            write_value(f, value)
        };
        if let Some(ip) = self.for_node {
            match ip {
                IpAddr::V4(v4) => pair(f, "for", &v4.to_string())?,
                IpAddr::V6(v6) => pair(f, "for", &format!("[{v6}]"))?,
            }
        }
        if let Some(proto) = &self.proto {
            pair(f, "proto", proto)?;
        }
        if let Some(host) = &self.host {
            pair(f, "host", host)?;
        }
        Ok(())
    }
}

/// A token as is, anything else as a quoted string (RFC 9110 §5.6.2, §5.6.4).
fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if !value.is_empty() && value.bytes().all(is_tchar) {
        return f.write_str(value);
    }
    f.write_char('"')?;
    for c in value.chars() {
        if c == '"' || c == '\\' {
            f.write_char('\\')?;
        }
        f.write_char(c)?;
    }
    f.write_char('"')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A token, or a quoted string with its escapes removed; `None` if malformed.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.is_empty() && value.bytes().all(is_tchar)).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes() {
        let cases = [
            ("198.51.100.9", Some("198.51.100.9")),
            (" 198.51.100.9 ", Some("198.51.100.9")),
            ("198.51.100.9:8080", Some("198.51.100.9")),
            ("\"198.51.100.9:8080\"", Some("198.51.100.9")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("\"[2001:db8::1]:4711\"", Some("2001:db8::1")),
            ("fe80::1%eth0", Some("fe80::1")),
            ("[fe80::1%25eth0]:80", Some("fe80::1")),
            ("::ffff:192.0.2.1", Some("192.0.2.1")),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
            ("198.51.100", None),
            ("198.51.100.9:", None),
            ("198.51.100.9:http", None),
            ("198.51.100.9:123456", None),
            ("[2001:db8::1", None),
            ("[2001:db8::1]x", None),
            ("<script>", None),
            ("300.1.1.1", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_node(input).map(|ip| ip.to_string()),
                expected.map(str::to_owned),
                "{input:?}"
            );
        }
    }

    #[test]
    fn elements_parse() {
        let e = ForwardedElement::parse(
            "For=\"[2001:db8:cafe::17]:4711\";Proto=HTTPS;by=203.0.113.43;host=\"kestra.example:8443\"",
        )
        .unwrap();
        assert_eq!(e.for_node, Some("2001:db8:cafe::17".parse().unwrap()));
        assert_eq!(e.proto.as_deref(), Some("https"));
        assert_eq!(e.host.as_deref(), Some("kestra.example:8443"));
        assert_eq!(
            ForwardedElement::parse("for=unknown").unwrap().for_node,
            None
        );
        assert_eq!(
            ForwardedElement::parse("for=_gazonk").unwrap().for_node,
            None
        );
        for malformed in ["for", "for=\"open", "host=a b", "for=\"a\"b\""] {
            assert_eq!(ForwardedElement::parse(malformed), None, "{malformed}");
        }
    }

    #[test]
    fn elements_format() {
        let cases = [
            (
                ForwardedElement {
                    for_node: Some("192.0.2.60".parse().unwrap()),
                    proto: Some("http".into()),
                    host: Some("kestra.example.com".into()),
                },
                "for=192.0.2.60;proto=http;host=kestra.example.com",
            ),
            (
                ForwardedElement {
                    for_node: Some("2001:db8::1".parse().unwrap()),
                    proto: Some("https".into()),
                    host: Some("kestra.example.com:8443".into()),
                },
                "for=\"[2001:db8::1]\";proto=https;host=\"kestra.example.com:8443\"",
            ),
            (
                ForwardedElement {
                    for_node: None,
                    proto: None,
                    host: Some("a\"b".into()),
                },
                "host=\"a\\\"b\"",
            ),
        ];
        for (element, expected) in cases {
            assert_eq!(element.to_string(), expected);
            assert_eq!(ForwardedElement::parse(expected), Some(element));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn ip() -> impl Strategy<Value = IpAddr> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u16; 8]>().prop_map(IpAddr::from),
            ]
            .prop_map(|ip| ip.to_canonical())
        }

        proptest! {
            #[test]
            fn format_then_parse_round_trips(
                for_node in proptest::option::of(ip()),
                proto in proptest::option::of(prop_oneof![Just("http".to_owned()), Just("https".to_owned())]),
                host in proptest::option::of("[ -~]{0,30}"),
            ) {
                let element = ForwardedElement { for_node, proto, host };
                let text = element.to_string();
                prop_assert_eq!(ForwardedElement::parse(&text), Some(element));
            }

            #[test]
            fn parsing_never_panics(text in ".{0,60}") {
                let _ = ForwardedElement::parse(&text);
                let _ = parse_node(&text);
            }

            #[test]
            fn every_ip_text_form_parses(ip in ip(), port in 1u16..) {
                prop_assert_eq!(parse_node(&ip.to_string()), Some(ip));
                let with_port = match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                };
                prop_assert_eq!(parse_node(&with_port), Some(ip));
            }
        }
    }
}
