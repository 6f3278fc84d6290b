//! Paths that skip forward authentication: Kestra's machine endpoints.

use kestra_edge_prefix::is_unsafe_path;

/// A path that skips forward authentication, such as `/kestra/api/v1/executions/webhook/`,
/// `/kestra/ping` or `/kestra/api/v1/{tenant}/executions/webhook/`.
///
/// It matches a request path that starts with the same segments (whole segments, so
/// `/kestra/ping` never matches `/kestra/pingx`). `{name}` stands for any one non-empty
/// segment (Kestra's `{tenant}`). Both are compared after normalisation:
///
/// - empty segments are ignored (`//` is `/`), as Kestra's own `AuthenticationFilter`
///   collapses `/+` before it looks for its open endpoints;
/// - a percent-encoded unreserved character is decoded (`%70ing` is `ping`, RFC 3986 §6.2.2.2),
///   every other escape is compared with upper-case hex (`%2f` is `%2F`, still one segment);
/// - a path that hides a `.` or `..` segment (raw, encoded, behind `%2F` or `;`), a backslash
///   or a NUL is never bypassed ([`is_unsafe_path`]): a server that resolves it could reach
///   a protected endpoint through a bypassed prefix.
///
/// Case matters, as in Kestra's routes. The query is never looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BypassPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Normalised bytes.
    Literal(Vec<u8>),
    /// `{name}`: any one non-empty segment.
    Any,
}

/// A bypass path [`BypassPath::parse`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bypass path {path:?} {reason}")]
pub struct BypassPathError {
    path: String,
    reason: &'static str,
}

impl BypassPath {
    /// Parses a bypass path; see the [type docs](Self).
    pub fn parse(text: &str) -> Result<Self, BypassPathError> {
        let error = |reason| BypassPathError {
            path: text.to_owned(),
            reason,
        };
        if !text.starts_with('/') {
            return Err(error("must start with /"));
        }
        if is_unsafe_path(text) {
            return Err(error("must not hold . or .. segments, backslashes or NUL"));
        }
        if text.contains('?') || text.contains('#') {
            return Err(error("must be a path, without query or fragment"));
        }
        let mut segments = Vec::new();
        for raw in text.split('/').filter(|s| !s.is_empty()) {
            let segment = if raw.len() > 2 && raw.starts_with('{') && raw.ends_with('}') {
                Segment::Any
            } else if raw.contains(['{', '}']) {
                return Err(error("may use {name} only as a whole segment"));
            } else {
                Segment::Literal(Normalised::new(raw.as_bytes()).collect())
            };
            segments.push(segment);
        }
        if segments.is_empty() {
            return Err(error(
                "must name at least one segment (/ would bypass everything)",
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the request path `path` (no query) skips forward authentication.
    pub fn matches(&self, path: &str) -> bool {
        if !path.starts_with('/') || is_unsafe_path(path) {
            return false;
        }
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        self.segments
            .iter()
            .all(|segment| match (segment, parts.next()) {
                (_, None) => false,
                (Segment::Any, Some(_)) => true,
                (Segment::Literal(literal), Some(part)) => {
                    Normalised::new(part.as_bytes()).eq(literal.iter().copied())
                }
            })
    }
}

/// Whether `byte` is unreserved (RFC 3986 §2.3).
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The bytes of a segment after normalisation, without allocating: escapes of unreserved
/// characters decoded, other escapes upper-cased.
struct Normalised<'a> {
    bytes: &'a [u8],
    pending: [u8; 2],
    pending_len: usize,
}

impl<'a> Normalised<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pending: [0; 2],
            pending_len: 0,
        }
    }
}

impl Iterator for Normalised<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.pending_len > 0 {
            let byte = self.pending[2 - self.pending_len];
            self.pending_len -= 1;
            return Some(byte);
        }
        let (&first, rest) = self.bytes.split_first()?;
        if first == b'%' {
            if let [high, low, tail @ ..] = rest {
                if let (Some(h), Some(l)) = (hex_value(*high), hex_value(*low)) {
                    self.bytes = tail;
                    let decoded = h * 16 + l;
                    if is_unreserved(decoded) {
                        return Some(decoded);
                    }
                    self.pending = [high.to_ascii_uppercase(), low.to_ascii_uppercase()];
                    self.pending_len = 2;
                    return Some(b'%');
                }
            }
        }
        self.bytes = rest;
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kestra_machine_endpoints() {
        let webhook = BypassPath::parse("/kestra/api/v1/executions/webhook/").unwrap();
        let tenant = BypassPath::parse("/kestra/api/v1/{tenant}/executions/webhook/").unwrap();
        let ping = BypassPath::parse("/kestra/ping").unwrap();
        let cases: &[(&BypassPath, &str, bool)] = &[
            (
                &webhook,
                "/kestra/api/v1/executions/webhook/ns/flow/key",
                true,
            ),
            (&webhook, "/kestra/api/v1/executions/webhook", true),
            (&webhook, "/kestra//api/v1/executions/webhook/ns/f/k", true),
            (&webhook, "/kestra/api/v1/executions/%77ebhook/ns/f/k", true),
            (&webhook, "/kestra/api/v1/executions/webhooks/ns/f/k", false),
            (&webhook, "/kestra/api/v1/executions/ns/f", false),
            (
                &webhook,
                "/kestra/api/v1/executions/webhook/../../flows",
                false,
            ),
            (
                &webhook,
                "/kestra/api/v1/executions/webhook/%2e%2e/%2E%2E/flows",
                false,
            ),
            (
                &webhook,
                "/kestra/api/v1/executions/webhook%2F..%2F..%2Fflows",
                false,
            ),
            (&webhook, "/KESTRA/api/v1/executions/webhook/a", false),
            (
                &tenant,
                "/kestra/api/v1/main/executions/webhook/ns/f/k",
                true,
            ),
            (
                &tenant,
                "/kestra/api/v1/acme/executions/webhook/ns/f/k",
                true,
            ),
            (&tenant, "/kestra/api/v1/main/executions/ns/f", false),
            (
                &tenant,
                "/kestra/api/v1/main/flows/executions/webhook",
                false,
            ),
            (&ping, "/kestra/ping", true),
            (&ping, "/kestra/ping/", true),
            (&ping, "/kestra/pingx", false),
            (&ping, "/kestra/p%69ng", true),
            (&ping, "/kestra/ping%2Fx", false),
            (&ping, "/kestra", false),
            (&ping, "kestra/ping", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(
                pattern.matches(path),
                *expected,
                "{} against {path}",
                pattern.as_str()
            );
        }
    }

    #[test]
    fn encoded_slash_is_compared_as_an_escape() {
        let pattern = BypassPath::parse("/a%2fb").unwrap();
        assert!(pattern.matches("/a%2Fb"));
        assert!(pattern.matches("/a%2fb/c"));
        assert!(!pattern.matches("/a/b"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that matter: the bypass prefix, dots, escapes.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/"),
                Just("kestra"),
                Just("api"),
                Just("v1"),
                Just("executions"),
                Just("webhook"),
                Just("%77ebhook"),
                Just("main"),
                Just("."),
                Just(".."),
                Just("%2e"),
                Just("%2E"),
                Just("%2F"),
                Just("%2f"),
                Just("%5C"),
                Just("\\"),
                Just("%00"),
                Just("%"),
                Just(";"),
                Just("x"),
            ];
            let start = prop_oneof![
                3 => Just("/kestra/api/v1/executions/webhook/"),
                1 => Just("/kestra/api/v1/main/executions/webhook/"),
                1 => Just("/"),
            ];
            (start, proptest::collection::vec(piece, 0..10))
                .prop_map(|(start, pieces)| format!("{start}{}", pieces.concat()))
        }

        /// The segments a backend that decodes `%2F`, `%5C`, `%2E` and unreserved escapes
        /// once, collapses `//` and removes dot segments (RFC 3986 §5.2.4) would route.
        fn resolved(path: &str) -> Vec<String> {
            let decoded = path
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%5C", "/")
                .replace('\\', "/")
                .replace("%2e", ".")
                .replace("%2E", ".")
                .replace("%77", "w");
            let mut stack: Vec<String> = Vec::new();
            for segment in decoded.split('/').filter(|s| !s.is_empty()) {
                match segment.split(';').next().unwrap_or_default() {
                    "." => {}
                    ".." => {
                        stack.pop();
                    }
                    _ => stack.push(segment.to_owned()),
                }
            }
            stack
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn a_bypassed_path_never_resolves_outside_its_prefix(path in path()) {
                let webhook = BypassPath::parse("/kestra/api/v1/executions/webhook/").unwrap();
                let tenant = BypassPath::parse("/kestra/api/v1/{tenant}/executions/webhook/").unwrap();
                if webhook.matches(&path) {
                    let segments = resolved(&path);
                    prop_assert!(
                        segments.starts_with(&["kestra", "api", "v1", "executions", "webhook"].map(String::from)),
                        "{path} resolves to {segments:?}"
                    );
                }
                if tenant.matches(&path) {
                    let segments = resolved(&path);
                    prop_assert!(segments.len() >= 6, "{path} resolves to {segments:?}");
                    prop_assert_eq!(&segments[..3], &["kestra", "api", "v1"].map(String::from));
                    prop_assert_eq!(&segments[4..6], &["executions", "webhook"].map(String::from));
                }
            }
        }
    }

    #[test]
    fn refused_patterns() {
        for text in [
            "",
            "kestra/ping",
            "/",
            "//",
            "/kestra/../x",
            "/a?b",
            "/a{b}c",
            "/{}",
        ] {
            assert!(BypassPath::parse(text).is_err(), "{text:?} accepted");
        }
    }
}
