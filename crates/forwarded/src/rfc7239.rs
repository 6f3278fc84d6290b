//! The `Forwarded` header (RFC 7239) and the addresses in `X-Forwarded-For`.

use std::{
    fmt,
    io::Write as _,
    net::{IpAddr, Ipv6Addr},
    ops::Range,
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::new();
        write_element(
            &mut text,
            self.for_node,
            self.proto.as_deref(),
            self.host.as_deref(),
        );
        // Every byte written comes from a `&str` or is ASCII.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Appends one `Forwarded` element to `out`: the present parameters among `for`, `proto` and
/// `host`, separated by `;` (RFC 7239 §4). An IPv6 `for` is bracketed and quoted
/// (`for="[2001:db8::1]"`, RFC 7239 §6); any other value that is not a token is quoted.
///
/// Returns where in `out` the `for` address's text is, as [`write_ip`] writes it: the
/// service sends that text in `X-Real-IP` too, formatted once. The service writes the
/// elements it sends with this, straight into its scratch text: no `String` per parameter.
pub(crate) fn write_element(
    out: &mut Vec<u8>,
    for_node: Option<IpAddr>,
    proto: Option<&str>,
    host: Option<&str>,
) -> Option<Range<usize>> {
    let mut separator: &[u8] = b"";
    let mut address = None;
    if let Some(ip) = for_node {
        // Digits and dots are a token; colons are not: always quoted, never escaped.
        let quoted = ip.is_ipv6();
        out.extend_from_slice(if quoted { b"for=\"[" } else { b"for=" });
        let start = out.len();
        write_ip(out, ip);
        address = Some(start..out.len());
        if quoted {
            out.extend_from_slice(b"]\"");
        }
        separator = b";";
    }
    for (name, value) in [(&b"proto="[..], proto), (&b"host="[..], host)] {
        if let Some(value) = value {
            out.extend_from_slice(separator);
            out.extend_from_slice(name);
            write_value(out, value);
            separator = b";";
        }
    }
    address
}

/// Appends `ip` as its `Display` writes it (`198.51.100.9`, `2001:db8::1`).
///
/// An IPv4 address is written digit by digit into a stack buffer, then appended at once:
/// `Ipv4Addr`'s `Display` runs the formatting machinery once per octet, which costs more
/// than the rest of a `Forwarded` element.
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        // Writing to a `Vec` cannot fail.
        let _ = write!(out, "{ip}");
        return;
    };
    let mut text = [0; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.extend_from_slice(&text[..len]);
}

/// Appends `n` in decimal, as its `Display` writes it, without the formatting machinery.
pub(crate) fn write_decimal(out: &mut Vec<u8>, n: u16) {
    // The digits from the highest place down; a `u16` has at most five.
    let mut digits = [0; 5];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A token as is, anything else as a quoted string (RFC 9110 §5.6.2, §5.6.4).
fn write_value(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    if !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b)) {
        out.extend_from_slice(bytes);
        return;
    }
    out.push(b'"');
    // Byte by byte: the bytes of a multi-byte character are never `"` or `\`.
    for &b in bytes {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// `tchar` (RFC 9110 §5.6.2), one table look-up per byte.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

const TCHAR: [bool; 256] = ascii_alphanumeric_and(b"!#$%&'*+-.^_`|~");

/// A byte table: `true` for ASCII letters and digits and for the bytes of `extra`.
pub(crate) const fn ascii_alphanumeric_and(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
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

    #[test]
    fn the_tchar_table_is_rfc_9110s() {
        for b in 0..=u8::MAX {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), tchar, "{b}");
        }
    }

    #[test]
    fn ip_text_at_the_digit_boundaries() {
        for ip in [
            "0.9.10.99",
            "100.199.200.255",
            "0.0.0.0",
            "::",
            "2001:db8::1",
            "::ffff:0.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = Vec::new();
            write_ip(&mut text, ip);
            assert_eq!(text, ip.to_string().as_bytes());
        }
        for n in [0, 9, 10, 99, 100, 999, 1000, 9999, 10000, u16::MAX] {
            let mut text = Vec::new();
            write_decimal(&mut text, n);
            assert_eq!(text, n.to_string().as_bytes());
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
            fn ip_text_is_display(ip in prop_oneof![ip(), any::<[u16; 8]>().prop_map(IpAddr::from)]) {
                let mut text = Vec::new();
                write_ip(&mut text, ip);
                prop_assert_eq!(text, ip.to_string().into_bytes());
            }

            #[test]
            fn decimal_text_is_display(n in any::<u16>()) {
                let mut text = Vec::new();
                write_decimal(&mut text, n);
                prop_assert_eq!(text, n.to_string().into_bytes());
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
