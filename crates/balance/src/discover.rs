//! Which replicas there are: the configured upstreams, a host name that resolves to several
//! addresses being one replica per address (a Kubernetes headless Service).

use http::uri::{Scheme, Uri};
use std::{
    fmt,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
};

/// The future of [`Resolve::resolve`].
pub type Resolving<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a host name to the addresses of its replicas. The balancer calls it at start-up
/// and every refresh period; tests inject their own instead of touching the system's files.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, each with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a>;
}

impl<R: Resolve + ?Sized> Resolve for std::sync::Arc<R> {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        (**self).resolve(host, port)
    }
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One configured `--upstream`.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) url: String,
    scheme: Scheme,
    host: String,
    port: u16,
    literal: Option<IpAddr>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Source {
    pub(crate) fn parse(url: &str) -> Result<Self, crate::BuildError> {
        let invalid = || crate::BuildError::InvalidUpstream(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let scheme = uri.scheme().cloned().ok_or_else(invalid)?;
        let default_port = if scheme == Scheme::HTTPS {
            443
        } else if scheme == Scheme::HTTP {
            80
        } else {
            return Err(invalid());
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        if authority.as_str().contains('@')
            || !matches!(uri.path(), "" | "/")
            || uri.query().is_some()
        {
            return Err(invalid());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Self {
            url: url.to_owned(),
            literal: host.parse().ok(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
            scheme,
        })
    }

    /// Whether the host is a name resolved to one replica per address. An `https` name is
    /// not split: the certificate and SNI are the name's, and the proxy connects by name.
    pub(crate) fn is_dynamic(&self) -> bool {
        self.literal.is_none() && self.scheme == Scheme::HTTP
    }

    /// The replica addresses (`ip:port`, or `host:port` for a name that is not split).
    pub(crate) async fn addresses(&self, resolver: &dyn Resolve) -> io::Result<Vec<String>> {
        if let Some(ip) = self.literal {
            return Ok(vec![SocketAddr::new(ip, self.port).to_string()]);
        }
        if !self.is_dynamic() {
            return Ok(vec![format!("{}:{}", self.host, self.port)]);
        }
        let mut found: Vec<String> = resolver
            .resolve(&self.host, self.port)
            .await?
            .into_iter()
            .map(|addr| addr.to_string())
            .collect();
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.host),
            ));
        }
        Ok(found)
    }

    /// The URL of the replica at `address`, on `port` when given (health checks).
    pub(crate) fn url_for(&self, address: &str, port: Option<u16>) -> String {
        match port {
            None => format!("{}://{address}", self.scheme),
            Some(port) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                format!("{}://{host}:{port}", self.scheme)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<SocketAddr>);

    impl Resolve for Fixed {
        fn resolve<'a>(&'a self, _host: &'a str, port: u16) -> Resolving<'a> {
            let found = self
                .0
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect();
            Box::pin(async move { Ok(found) })
        }
    }

    #[tokio::test]
    async fn names_split_into_addresses_literals_and_https_names_do_not() {
        let resolver = Fixed(vec![
            "10.0.0.2:0".parse().unwrap(),
            "10.0.0.1:0".parse().unwrap(),
            "10.0.0.2:0".parse().unwrap(),
        ]);
        let name = Source::parse("http://kestra-headless:8080").unwrap();
        assert!(name.is_dynamic());
        assert_eq!(
            name.addresses(&resolver).await.unwrap(),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        let literal = Source::parse("http://[::1]:8080/").unwrap();
        assert_eq!(literal.addresses(&resolver).await.unwrap(), ["[::1]:8080"]);
        assert_eq!(
            literal.url_for("[::1]:8080", Some(8081)),
            "http://[::1]:8081"
        );
        let https = Source::parse("https://kestra.internal").unwrap();
        assert!(!https.is_dynamic());
        assert_eq!(
            https.addresses(&resolver).await.unwrap(),
            ["kestra.internal:443"]
        );
        assert_eq!(
            https.url_for("kestra.internal:443", None),
            "https://kestra.internal:443"
        );
        for bad in [
            "kestra:8080",
            "ftp://kestra",
            "http://kestra/x",
            "http://u@kestra",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
        let none = Fixed(Vec::new());
        assert!(name.addresses(&none).await.is_err());
    }
}
