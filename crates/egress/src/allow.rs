//! The allow-list: which requested names the proxy may reach.

use crate::target::Target;

/// One `--egress-allow` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `host`: that name, any port.
    Host(String),
    /// `host:port`: that name on that port.
    HostPort(String, u16),
    /// `*.domain`: any name below `domain` (not `domain` itself), any port.
    Suffix(String),
}

/// A pattern that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid egress allow pattern {pattern:?}: use host, host:port or *.domain")]
pub struct PatternError {
    pattern: String,
}

/// The names the proxy may reach, matched case-insensitively on the name the client asked
/// for (before resolution). Empty: nothing is allowed.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

impl AllowList {
    /// Parses `host`, `host:port` and `*.domain` patterns (IPv6 literals in brackets).
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns = patterns
            .into_iter()
            .map(|p| parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether the list is empty (nothing allowed).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `host:port` may be reached. `host` is already lower case (see [`Target`]).
    pub(crate) fn allows(&self, target: &Target) -> bool {
        let (host, port) = (target.host.as_str(), target.port);
        self.patterns.iter().any(|pattern| match pattern {
            Pattern::Host(name) => name == host,
            Pattern::HostPort(name, p) => name == host && *p == port,
            Pattern::Suffix(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        })
    }
}

fn parse(text: &str) -> Result<Pattern, PatternError> {
    let error = || PatternError {
        pattern: text.to_owned(),
    };
    let text = text.trim();
    if let Some(domain) = text.strip_prefix("*.") {
        if !valid_name(domain) {
            return Err(error());
        }
        return Ok(Pattern::Suffix(domain.to_ascii_lowercase()));
    }
    let (host, port) = match Target::split_host_port(text) {
        Some((host, Some(port))) => (host, Some(port)),
        Some((host, None)) => (host, None),
        None => return Err(error()),
    };
    let host = host.to_ascii_lowercase();
    if !valid_name(&host) && host.parse::<std::net::IpAddr>().is_err() {
        return Err(error());
    }
    Ok(match port {
        Some(port) => Pattern::HostPort(host, port),
        None => Pattern::Host(host),
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allows(list: &AllowList, authority: &str) -> bool {
        list.allows(&Target::authority(authority).unwrap())
    }

    #[test]
    fn patterns_match_case_insensitively_on_name_and_port() {
        let list = AllowList::new([
            "api.kestra.io",
            "Repo.Example.com:8443",
            "*.Blueprints.dev",
            "[::1]:9000",
        ])
        .unwrap();
        let cases = [
            ("api.kestra.io:443", true),
            ("API.KESTRA.IO:80", true),
            ("api.kestra.io.evil.com:443", false),
            ("evilapi.kestra.io:443", false),
            ("repo.example.com:8443", true),
            ("repo.example.com:443", false),
            ("a.blueprints.dev:443", true),
            ("a.b.BLUEPRINTS.dev:443", true),
            ("blueprints.dev:443", false),
            ("xblueprints.dev:443", false),
            ("[::1]:9000", true),
            ("[::1]:9001", false),
        ];
        for (authority, expected) in cases {
            assert_eq!(allows(&list, authority), expected, "{authority}");
        }
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let list = AllowList::default();
        assert!(list.is_empty());
        assert!(!allows(&list, "api.kestra.io:443"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "*.",
            "a b",
            "host:port",
            "host:99999",
            "*.a/b",
            "http://x",
        ] {
            assert!(AllowList::new([bad]).is_err(), "{bad:?} accepted");
        }
    }
}
