//! [`ForwardAuthLayer`], its builder and configuration.

use crate::{
    bypass::{BypassPath, BypassPathError},
    cache::AllowCache,
    check::{AuthClient, AuthService},
    credentials::{CredentialsError, KestraCredentials},
    service::ForwardAuth,
};
use http::{HeaderName, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tower::Layer;

/// The default `timeout`: the longest the auth service may take (connect and answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default size of the allow cache, in entries.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
/// The default limit on the body of an auth answer that is relayed to the client.
pub const DEFAULT_MAX_DENIAL_BODY: usize = 64 * 1024;
/// How long an idle connection to the auth service stays pooled.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A configuration that [`ForwardAuthBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardAuthError {
    /// The auth URL is not an absolute `http://` or `https://` URL.
    #[error("forward auth URL {0:?} must be an absolute http:// or https:// URL")]
    InvalidUrl(String),
    /// A CA file for an `https://` auth service cannot be used.
    #[error("auth service CA file {path}: {reason}")]
    AuthCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS client could not be configured.
    #[error("TLS client for the auth service: {0}")]
    Tls(String),
    /// No trusted root at all for an `https://` auth service.
    #[error(
        "no trusted root for the https auth service: the system has none and no CA file was given"
    )]
    NoTrustedRoots,
    /// An auth-response header name is not a valid header name.
    #[error("auth response header {0:?} is not a valid header name")]
    InvalidHeaderName(String),
    /// An auth-response header is one the layer must own.
    #[error("auth response header {0:?} cannot be copied upstream (Authorization, Cookie, Host and hop-by-hop fields are not identity headers)")]
    ReservedHeaderName(String),
    /// The timeout is zero.
    #[error("forward auth timeout must be more than zero")]
    ZeroTimeout,
    /// A bypass path.
    #[error(transparent)]
    Bypass(#[from] BypassPathError),
    /// Bypass paths or a cache without an auth URL.
    #[error("auth bypass paths and the allow cache need a forward auth URL")]
    NoAuthUrl,
    /// The Kestra credentials file.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// Configures a [`ForwardAuthLayer`]; everything is validated by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct ForwardAuthBuilder {
    url: Option<String>,
    timeout: Duration,
    response_headers: Vec<String>,
    bypass: Vec<String>,
    cache_ttl: Option<Duration>,
    cache_capacity: usize,
    max_denial_body: usize,
    credentials_file: Option<PathBuf>,
    watch_credentials: bool,
    ca_files: Vec<PathBuf>,
}

impl Default for ForwardAuthBuilder {
    fn default() -> Self {
        Self {
            url: None,
            timeout: DEFAULT_TIMEOUT,
            response_headers: Vec::new(),
            bypass: Vec::new(),
            cache_ttl: None,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_denial_body: DEFAULT_MAX_DENIAL_BODY,
            credentials_file: None,
            watch_credentials: true,
            ca_files: Vec::new(),
        }
    }
}

impl ForwardAuthBuilder {
    /// The auth service (`http://oauth2-proxy:4180/oauth2/auth`, or `https://`): asked with a
    /// bodiless `GET` before each request is forwarded. Without it, no request is checked
    /// (Kestra's credentials alone may still be injected).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The longest the auth service may take, connecting included (default 5 s); then 503.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A header of a 2xx auth answer copied onto the upstream request (`X-Auth-Request-User`,
    /// `Remote-User`); repeatable. The client's own headers of these names are always removed.
    pub fn auth_response_header(mut self, name: impl Into<String>) -> Self {
        self.response_headers.push(name.into());
        self
    }

    /// A path that skips forward authentication (see [`BypassPath`]); repeatable.
    pub fn bypass(mut self, path: impl Into<String>) -> Self {
        self.bypass.push(path.into());
        self
    }

    /// Caches allow decisions for `ttl` (off by default; `None` or zero turns it off).
    pub fn cache(mut self, ttl: Option<Duration>) -> Self {
        self.cache_ttl = ttl.filter(|ttl| !ttl.is_zero());
        self
    }

    /// The most allow decisions cached (default 10 000); the oldest goes first.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// The largest body of a denial relayed to the client (default 64 KiB); a larger one is
    /// relayed with an empty body.
    pub fn max_denial_body(mut self, bytes: usize) -> Self {
        self.max_denial_body = bytes;
        self
    }

    /// Also trusts the certificates of the PEM file at `path` for an `https://` auth service
    /// (a cluster's private CA), besides the system's roots; repeatable.
    pub fn auth_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Kestra's credentials, a file holding `user:password`; see [`KestraCredentials`].
    pub fn kestra_credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Whether the credentials file is watched and read again when it changes (default on).
    pub fn watch_credentials(mut self, watch: bool) -> Self {
        self.watch_credentials = watch;
        self
    }

    /// Validates the configuration, reads the credentials file and starts watching it.
    pub fn build(self) -> Result<ForwardAuthLayer, ForwardAuthError> {
        if self.url.is_none() && (!self.bypass.is_empty() || self.cache_ttl.is_some()) {
            return Err(ForwardAuthError::NoAuthUrl);
        }
        let auth = match &self.url {
            None => None,
            Some(url) => {
                let uri: Uri = url
                    .parse()
                    .map_err(|_| ForwardAuthError::InvalidUrl(url.clone()))?;
                let https = match uri.scheme_str() {
                    Some("http") => false,
                    Some("https") => true,
                    _ => return Err(ForwardAuthError::InvalidUrl(url.clone())),
                };
                if uri.authority().is_none() {
                    return Err(ForwardAuthError::InvalidUrl(url.clone()));
                }
                if self.timeout.is_zero() {
                    return Err(ForwardAuthError::ZeroTimeout);
                }
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT);
                let client = if https {
                    // The HttpConnector refuses https URIs unless told TLS is handled above it.
                    connector.enforce_http(false);
                    let tls = client_config(&self.ca_files)?;
                    AuthClient::Https(builder.build(HttpsConnector::from((connector, tls))))
                } else {
                    // Unused over http, but a broken file is still a configuration error.
                    let mut unused = RootCertStore::empty();
                    for path in &self.ca_files {
                        add_ca_file(&mut unused, path)?;
                    }
                    AuthClient::Http(builder.build(connector))
                };
                Some(AuthService {
                    uri,
                    client,
                    timeout: self.timeout,
                    max_body: self.max_denial_body,
                    cache: self
                        .cache_ttl
                        .map(|ttl| AllowCache::new(ttl, self.cache_capacity)),
                })
            }
        };
        let response_headers = self
            .response_headers
            .iter()
            .map(|text| {
                let name = HeaderName::from_bytes(text.trim().as_bytes())
                    .map_err(|_| ForwardAuthError::InvalidHeaderName(text.clone()))?;
                if is_reserved(&name) {
                    return Err(ForwardAuthError::ReservedHeaderName(text.clone()));
                }
                Ok(name)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bypass = self
            .bypass
            .iter()
            .map(|path| BypassPath::parse(path))
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match &self.credentials_file {
            None => None,
            Some(path) => {
                let credentials = KestraCredentials::load(path)?;
                if self.watch_credentials {
                    credentials.watch()?;
                }
                Some(credentials)
            }
        };
        if auth.is_none() && credentials.is_some() {
            tracing::warn!(
                "Kestra credentials without forward auth: every client reaches Kestra as its \
                 configured user"
            );
        }
        if auth.is_none() && credentials.is_none() {
            return Ok(ForwardAuthLayer::disabled());
        }
        Ok(ForwardAuthLayer {
            config: Some(Arc::new(Config {
                auth,
                response_headers,
                bypass,
                credentials,
            })),
        })
    }
}

/// TLS to an `https://` auth service: the system's roots plus `ca_files`, ring, TLS 1.2 and
/// 1.3, ALPN `http/1.1` (the client speaks HTTP/1.1 only).
fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, ForwardAuthError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "cannot load a system trust root");
    }
    roots.add_parsable_certificates(native.certs);
    for path in ca_files {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(ForwardAuthError::NoTrustedRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ForwardAuthError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Adds every certificate of the PEM file at `path` to `roots`; at least one.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), ForwardAuthError> {
    let error = |reason: String| ForwardAuthError::AuthCa {
        path: path.to_owned(),
        reason,
    };
    let mut found = 0_usize;
    for cert in CertificateDer::pem_file_iter(path).map_err(|err| error(err.to_string()))? {
        let cert = cert.map_err(|err| error(err.to_string()))?;
        roots.add(cert).map_err(|err| error(err.to_string()))?;
        found += 1;
    }
    if found == 0 {
        return Err(error("holds no PEM certificate".to_owned()));
    }
    Ok(())
}

/// Headers the layer itself owns: never copied from an auth answer.
fn is_reserved(name: &HeaderName) -> bool {
    use http::header::{
        AUTHORIZATION, CONTENT_LENGTH, COOKIE, HOST, SET_COOKIE, TRANSFER_ENCODING,
    };
    [
        AUTHORIZATION,
        COOKIE,
        HOST,
        SET_COOKIE,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
    ]
    .contains(name)
        || kestra_edge_headers::HOP_BY_HOP.contains(name)
}

/// Everything the layer needs per request, built once.
#[derive(Debug)]
pub(crate) struct Config {
    /// `None`: no forward auth, Kestra's credentials only.
    pub(crate) auth: Option<AuthService>,
    pub(crate) response_headers: Vec<HeaderName>,
    pub(crate) bypass: Vec<BypassPath>,
    pub(crate) credentials: Option<KestraCredentials>,
}

/// Forward authentication in front of Kestra, and Kestra's credentials injected upstream;
/// see the [crate docs](crate).
///
/// Cloning shares everything: the connection pool to the auth service, the allow cache and
/// the credentials. [`disabled`](Self::disabled) (the default) passes every request through
/// untouched, at the cost of one branch.
#[derive(Debug, Clone, Default)]
pub struct ForwardAuthLayer {
    config: Option<Arc<Config>>,
}

impl ForwardAuthLayer {
    /// Starts a configuration.
    pub fn builder() -> ForwardAuthBuilder {
        ForwardAuthBuilder::default()
    }

    /// A layer that changes nothing.
    pub fn disabled() -> Self {
        Self { config: None }
    }

    /// Whether requests are checked or changed at all.
    pub fn is_enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Requests allowed from the allow cache without asking the auth service.
    pub fn cache_hits(&self) -> u64 {
        self.config
            .as_ref()
            .and_then(|c| c.auth.as_ref()?.cache.as_ref())
            .map_or(0, AllowCache::hits)
    }

    /// Kestra's credentials, to [`reload`](KestraCredentials::reload) them on SIGHUP.
    pub fn kestra_credentials(&self) -> Option<&KestraCredentials> {
        self.config.as_ref()?.credentials.as_ref()
    }
}

impl<S> Layer<S> for ForwardAuthLayer {
    type Service = ForwardAuth<S>;

    fn layer(&self, inner: S) -> ForwardAuth<S> {
        ForwardAuth::new(inner, self.config.clone())
    }
}
