//! `kestra-edge doctor`: checks a running Kestra through the gateway's eyes and prints each
//! finding with a fix, then the Kestra YAML and the kestra-edge flags that fit.
//!
//! What it asks, through the public URL (so through the gateway and whatever is in front):
//! - does `{ctx}/ping` answer `pong` (Kestra's `RootController`, open without basic auth)?
//! - does Kestra answer under the public URL's path, and only once (no `/kestra/kestra`)?
//! - is `url` in `GET {ctx}/api/v1/configs` (Kestra's `kestra.url`, `MiscController`) the
//!   public URL with its trailing slash, without `ui` or `api` (Kestra's "Webserver URL" page)?
//! - does `GET {ctx}/` redirect inside the context path (Kestra's `RedirectController`
//!   answers `{micronaut.server.context-path}/ui/`)?
//!
//! With `--upstream`, it also asks Kestra directly: is it reachable, which context path does
//! it serve under, and does it report the same `kestra.url` as through the gateway.
//!
//! Every answer is read with a deadline (`--timeout`) and at most [`MAX_ANSWER`] bytes, so a
//! server that stalls, floods or sends garbage yields a finding, never a hang or a panic.
//! [`diagnose`] returns the findings (for tests); [`run`] prints them and gives the exit code.

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::{
    fmt,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

/// The most bytes read from any answer; more is a finding, not an allocation.
pub const MAX_ANSWER: usize = 1 << 20;

/// `kestra-edge doctor`: checks a running Kestra through the gateway.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kestra-edge doctor",
    about = "Check a running Kestra through kestra-edge: reachability, /ping, kestra.url, \
             the context path and the redirect of {ctx}/; print each finding with a fix, \
             then the Kestra YAML and the kestra-edge flags that fit.",
    after_help = "Exit status: 0 when every check is OK, 1 when any finding is a PROBLEM, \
                  2 when the arguments are unusable."
)]
pub struct DoctorArgs {
    /// The URL users open Kestra at, through the gateway: scheme, host, port and context
    /// path, e.g. <https://kestra.example.com/kestra/> (no /ui, no /api).
    #[arg(long, value_name = "URL")]
    pub public_url: String,
    /// Kestra's webserver as the gateway reaches it (http://host:8080), also checked
    /// directly; repeatable, one per replica [default: none, only the public URL is checked].
    #[arg(
        long,
        env = "KESTRA_EDGE_UPSTREAM",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,
    /// The context path Kestra should be served under, e.g. /kestra
    /// [default: the public URL's path].
    #[arg(long, value_name = "PATH")]
    pub context_path: Option<String>,
    /// Longest wait for each request (connect, TLS handshake, answer).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// A PEM file of CA certificates trusted for https URLs, besides the system's;
    /// repeatable. There is no switch to skip verification.
    #[arg(long = "ca-file", value_name = "PATH")]
    pub ca_file: Vec<PathBuf>,
    /// A file holding Kestra's basic-auth `user:password` (the gateway's flag of the same
    /// name): Kestra 0.24 and later answer /api/v1/configs 401 without it. Sent to
    /// --upstream, and through the public URL only when it is https or loopback.
    #[arg(long, env = "KESTRA_EDGE_KESTRA_CREDENTIALS_FILE", value_name = "PATH")]
    pub kestra_credentials_file: Option<PathBuf>,
}

/// Arguments doctor cannot work with (exit status 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoctorError {
    /// `--public-url` is not an http(s) URL with a host.
    #[error("--public-url {url:?}: {reason}")]
    PublicUrl {
        /// What was given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// `--upstream` is not `http(s)://host:port`.
    #[error("--upstream {url:?}: {reason}")]
    Upstream {
        /// What was given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// `--context-path` is not a path.
    #[error("--context-path {path:?}: {reason}")]
    ContextPath {
        /// What was given.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The credentials file cannot be used.
    #[error("--kestra-credentials-file {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A `--ca-file` cannot be used, or TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As it should be.
    Ok,
    /// Wrong; the finding says how to fix it.
    Problem,
    /// Not checked, because an earlier check failed.
    Skipped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Problem => "PROBLEM",
            Status::Skipped => "SKIPPED",
        })
    }
}

/// Which check a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The public URL itself (no `/ui`, no `/api`; its path against `--context-path`).
    PublicUrl,
    /// The gateway answers at the public URL's host and port.
    Gateway,
    /// `{ctx}/ping` answers `pong` through the gateway.
    Ping,
    /// Kestra answers under the public URL's path, once.
    ContextPath,
    /// `kestra.url`, from `{ctx}/api/v1/configs`.
    KestraUrl,
    /// Where `{ctx}/` redirects.
    Redirect,
    /// An `--upstream` answers directly.
    Upstream,
    /// The context path an `--upstream` serves under.
    UpstreamContextPath,
    /// The `kestra.url` an `--upstream` reports, against the gateway's.
    UpstreamKestraUrl,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::PublicUrl => "public URL",
            Check::Gateway => "gateway",
            Check::Ping => "ping",
            Check::ContextPath => "context path",
            Check::KestraUrl => "kestra.url",
            Check::Redirect => "redirect",
            Check::Upstream => "upstream",
            Check::UpstreamContextPath => "upstream context path",
            Check::UpstreamKestraUrl => "upstream kestra.url",
        })
    }
}

/// One conclusion, and how to fix it when it is a problem.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// What it concluded.
    pub status: Status,
    /// What was seen.
    pub summary: String,
    /// What to change (problems only).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: Check, summary: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            summary: summary.into(),
            fix: None,
        }
    }

    fn problem(check: Check, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Problem,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }

    fn skipped(check: Check, summary: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Skipped,
            summary: summary.into(),
            fix: None,
        }
    }
}

/// Everything doctor found, and the configuration that fits.
#[derive(Debug, Clone)]
pub struct Report {
    /// The findings, in the order they were made.
    pub findings: Vec<Finding>,
    /// The public URL as checked (scheme, host, port, context path, trailing slash).
    pub public_url: String,
    /// The context path Kestra should serve under (`""` for none).
    pub context_path: String,
    /// What `kestra.url` should be.
    pub kestra_url: String,
    /// The upstreams given, for the flags.
    upstreams: Vec<String>,
    https: bool,
}

impl Report {
    /// Whether every check is OK (the exit status 0).
    pub fn is_ok(&self) -> bool {
        self.findings.iter().all(|f| f.status == Status::Ok)
    }

    /// The first finding of `check`.
    pub fn finding(&self, check: Check) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// Every finding of `check`.
    pub fn findings_of(&self, check: Check) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// The Kestra configuration that fits the public URL (`kestra.url`,
    /// `micronaut.server.context-path`), as YAML.
    pub fn kestra_yaml(&self) -> String {
        let mut yaml = format!("kestra:\n  url: {}\n", self.kestra_url);
        if self.context_path.is_empty() {
            yaml.push_str("# no micronaut.server.context-path: Kestra is served at the root\n");
        } else {
            yaml.push_str(&format!(
                "micronaut:\n  server:\n    context-path: {}\n",
                self.context_path
            ));
        }
        yaml
    }

    /// The kestra-edge flags that fit.
    pub fn gateway_flags(&self) -> String {
        let upstream = if self.upstreams.is_empty() {
            "http://KESTRA_HOST:8080".to_owned()
        } else {
            self.upstreams.join(",")
        };
        let mut flags = format!("kestra-edge --upstream {upstream}");
        if !self.context_path.is_empty() {
            flags.push_str(&format!(
                " --context-path {} --prefix-mode keep",
                self.context_path
            ));
        }
        if self.https {
            flags.push_str(
                " --tls-cert CERT.pem --tls-key KEY.pem\n\
                 # (or terminate TLS in front of kestra-edge, which must then send \
                 X-Forwarded-Proto: https)",
            );
        }
        flags
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kestra-edge doctor: {}", self.public_url)?;
        if !self.upstreams.is_empty() {
            writeln!(f, "upstream: {}", self.upstreams.join(", "))?;
        }
        writeln!(f)?;
        for finding in &self.findings {
            writeln!(
                f,
                "{:<8} {}: {}",
                finding.status.to_string(),
                finding.check,
                finding.summary
            )?;
            if let Some(fix) = &finding.fix {
                writeln!(f, "         fix: {fix}")?;
            }
        }
        let problems = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Problem)
            .count();
        let skipped = self
            .findings
            .iter()
            .filter(|f| f.status == Status::Skipped)
            .count();
        writeln!(f)?;
        match (problems, skipped) {
            (0, 0) => writeln!(f, "All checks OK.")?,
            (p, s) => writeln!(f, "{p} problem(s), {s} check(s) skipped.")?,
        }
        writeln!(f, "\nKestra configuration (application.yml):\n")?;
        write!(f, "{}", self.kestra_yaml())?;
        writeln!(f, "\nkestra-edge flags:\n\n{}", self.gateway_flags())
    }
}

/// Runs the checks, prints the report on stdout and returns the exit status: 0 when all is
/// right, 1 when not, 2 when the arguments are unusable (the message goes to stderr).
pub async fn run(args: DoctorArgs) -> ExitCode {
    run_to(args, &mut std::io::stdout()).await
}

/// [`run`], printing the report to `out`.
pub async fn run_to(args: DoctorArgs, out: &mut (dyn std::io::Write + Send)) -> ExitCode {
    match diagnose(&args).await {
        Ok(report) => {
            // A closed stdout (`| head`) must not turn into a panic.
            let _ = write!(out, "{report}");
            let _ = out.flush();
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr().lock(), "kestra-edge doctor: {err}");
            ExitCode::from(2)
        }
    }
}

/// Runs every check and returns the findings.
pub async fn diagnose(args: &DoctorArgs) -> Result<Report, DoctorError> {
    let (public, dropped) = PublicUrl::parse(&args.public_url)?;
    let intended = args
        .context_path
        .as_deref()
        .map(parse_context_path)
        .transpose()?;
    let upstreams = args
        .upstream
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(Origin::parse_upstream)
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = args
        .kestra_credentials_file
        .as_deref()
        .map(read_credentials)
        .transpose()?;
    let prober = Prober::new(args.timeout, &args.ca_file)?;
    let ctx = intended.clone().unwrap_or_else(|| public.path.clone());
    let kestra_url = format!("{}{ctx}/", public.origin);

    let mut findings = Vec::new();
    findings.push(public_url_finding(
        &public,
        dropped.as_deref(),
        intended.as_deref(),
    ));

    let gateway = check_gateway(&prober, &public, &ctx, credentials.as_ref(), &mut findings).await;
    let mut direct = Vec::new();
    for upstream in &upstreams {
        direct.push(
            check_upstream(
                &prober,
                upstream,
                &ctx,
                credentials.as_ref(),
                gateway.as_ref(),
                &mut findings,
            )
            .await,
        );
    }
    findings.push(kestra_url_finding(
        gateway.as_ref(),
        &direct,
        &kestra_url,
        &ctx,
        credentials.is_some(),
    ));
    // Findings in the order of the issue: reachability, ping, kestra.url, context path, redirect.
    findings.sort_by_key(|f| match f.check {
        Check::PublicUrl => 0,
        Check::Gateway => 1,
        Check::Upstream => 2,
        Check::Ping => 3,
        Check::KestraUrl => 4,
        Check::UpstreamKestraUrl => 5,
        Check::ContextPath => 6,
        Check::UpstreamContextPath => 7,
        Check::Redirect => 8,
    });
    Ok(Report {
        findings,
        public_url: format!("{}{}/", public.origin, public.path),
        context_path: ctx,
        kestra_url,
        upstreams: upstreams.iter().map(|u| u.0.clone()).collect(),
        https: public.https,
    })
}

/// `scheme://host[:port]`, lower case, default port left out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin(String);

impl Origin {
    fn of(uri: &Uri) -> Result<(Self, bool), String> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme {other}, not http or https")),
            None => return Err("no scheme: write http://… or https://…".to_owned()),
        };
        let Some(authority) = uri.authority() else {
            return Err("no host".to_owned());
        };
        if authority.as_str().contains('@') {
            return Err("user information in the URL is not supported".to_owned());
        }
        let host = authority.host().to_ascii_lowercase();
        let default = if https { 443 } else { 80 };
        let origin = match authority.port_u16() {
            Some(port) if port != default => format!("{}://{host}:{port}", uri_scheme(https)),
            _ => format!("{}://{host}", uri_scheme(https)),
        };
        Ok((Self(origin), https))
    }

    fn parse_upstream(url: &str) -> Result<Self, DoctorError> {
        let invalid = |reason: String| DoctorError::Upstream {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|err| invalid(format!("{err}")))?;
        let (origin, _) = Origin::of(&uri).map_err(invalid)?;
        match uri.path_and_query().map(|pq| pq.as_str()) {
            None | Some("") | Some("/") => Ok(origin),
            Some(path) => Err(invalid(format!(
                "has the path {path}: give scheme://host:port only, as for kestra-edge \
                 --upstream (the context path is --context-path)"
            ))),
        }
    }

    fn at(&self, path: &str) -> Result<Uri, String> {
        format!("{}{path}", self.0)
            .parse()
            .map_err(|err| format!("{err}"))
    }

    fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        match rest.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => rest.split(':').next().unwrap_or(rest),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn uri_scheme(https: bool) -> &'static str {
    if https {
        "https"
    } else {
        "http"
    }
}

/// The public URL: where users open Kestra.
#[derive(Debug, Clone)]
struct PublicUrl {
    origin: Origin,
    https: bool,
    /// The context path: `""` or `/kestra` (no trailing slash).
    path: String,
}

impl PublicUrl {
    /// The URL and, when its path ended in `/ui` or `/api…`, what was dropped.
    fn parse(url: &str) -> Result<(Self, Option<String>), DoctorError> {
        let invalid = |reason: String| DoctorError::PublicUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|err| invalid(format!("{err}")))?;
        let (origin, https) = Origin::of(&uri).map_err(invalid)?;
        if uri.query().is_some() {
            return Err(invalid("has a query string".to_owned()));
        }
        let path = normalize_path(uri.path()).map_err(invalid)?;
        // Kestra's own paths: the UI under {ctx}/ui/, the API under {ctx}/api/.
        let (path, dropped) = match ["/ui", "/api"]
            .iter()
            .filter_map(|marker| {
                path.find(&format!("{marker}/"))
                    .or_else(|| path.ends_with(marker).then(|| path.len() - marker.len()))
            })
            .min()
        {
            Some(at) => (path[..at].to_owned(), Some(path[at..].to_owned())),
            None => (path, None),
        };
        Ok((
            Self {
                origin,
                https,
                path,
            },
            dropped,
        ))
    }

    fn at(&self, path: &str) -> Result<Uri, String> {
        self.origin.at(path)
    }

    fn may_send_credentials(&self) -> bool {
        self.https || is_loopback(self.origin.host())
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `""` for the root, else `/a/b`: one leading slash, none trailing, no empty, `.` or `..`
/// segment.
fn normalize_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if !trimmed.starts_with('/') {
        return Err("a path must start with /".to_owned());
    }
    if trimmed[1..]
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err("the path has an empty, . or .. segment".to_owned());
    }
    Ok(trimmed.to_owned())
}

fn parse_context_path(path: &str) -> Result<String, DoctorError> {
    let invalid = |reason: String| DoctorError::ContextPath {
        path: path.to_owned(),
        reason,
    };
    let slashed = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let checked: Uri = slashed.parse().map_err(|err| invalid(format!("{err}")))?;
    if checked.query().is_some() {
        return Err(invalid("has a query string".to_owned()));
    }
    normalize_path(&slashed).map_err(invalid)
}

/// `Authorization: Basic …` from a file holding `user:password`.
fn read_credentials(path: &Path) -> Result<HeaderValue, DoctorError> {
    let unusable = |reason: &str| DoctorError::Credentials {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let text = std::fs::read_to_string(path).map_err(|err| unusable(&err.to_string()))?;
    let line = text.trim();
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            let token = base64::engine::general_purpose::STANDARD.encode(line);
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| unusable("not a valid header value"))?;
            value.set_sensitive(true);
            Ok(value)
        }
        _ => Err(unusable(
            "must hold one line user:password (user and password not empty)",
        )),
    }
}

/// What a GET brought back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

impl Answer {
    /// Kestra's `RootController` answers `/ping` with `pong`.
    fn is_pong(&self) -> bool {
        self.status == StatusCode::OK && self.body.trim_ascii() == b"pong"
    }
}

/// Why a GET brought nothing back.
#[derive(Debug)]
enum Failure {
    /// No answer (head and body) within `--timeout`.
    Timeout(Duration),
    /// No connection (refused, no route, DNS, TLS handshake).
    Connect(String),
    /// The answer was larger than [`MAX_ANSWER`].
    TooLarge,
    /// Anything else (the connection broke mid-answer, a malformed answer).
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(limit) => write!(
                f,
                "no answer within {} (--timeout)",
                humantime::format_duration(*limit)
            ),
            Failure::Connect(reason) => write!(f, "cannot connect: {reason}"),
            Failure::TooLarge => write!(f, "the answer is larger than {MAX_ANSWER} bytes"),
            Failure::Other(reason) => f.write_str(reason),
        }
    }
}

/// `err: its source: …`, the whole chain on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One-shot GETs with a deadline and a size cap, over http or https.
struct Prober {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Prober {
    fn new(timeout: Duration, ca_files: &[PathBuf]) -> Result<Self, DoctorError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        // https URIs are handled by the TLS layer around this connector.
        connector.enforce_http(false);
        let tls = client_config(ca_files)?;
        let client = Client::builder(TokioExecutor::new())
            // Every check opens its own connection: "reachable" means reachable now.
            .pool_max_idle_per_host(0)
            .build(HttpsConnector::from((connector, tls)));
        Ok(Self { client, timeout })
    }

    async fn get(&self, uri: Uri, authorization: Option<&HeaderValue>) -> Result<Answer, Failure> {
        let mut request = Request::get(uri)
            .header(header::USER_AGENT, "kestra-edge-doctor")
            .header(header::ACCEPT, "application/json, text/plain, */*");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|err| Failure::Other(err.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| {
                if err.is_connect() {
                    Failure::Connect(error_chain(&err))
                } else {
                    Failure::Other(error_chain(&err))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|err| {
                    if err.is::<http_body_util::LengthLimitError>() {
                        Failure::TooLarge
                    } else {
                        Failure::Other(error_chain(&*err))
                    }
                })?
                .to_bytes();
            let location = parts
                .headers
                .get(header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            Ok(Answer {
                status: parts.status,
                location,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }
}

/// Trust: the system's store plus every `--ca-file`, as kestra-edge's own upstream client.
/// ALPN offers `http/1.1` only: Kestra and the pooled client speak HTTP/1.1.
fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, DoctorError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in ca_files {
        let unusable = |reason: String| DoctorError::Tls(format!("{}: {reason}", path.display()));
        let mut found = 0_usize;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| unusable(e.to_string()))? {
            let cert = cert.map_err(|e| unusable(e.to_string()))?;
            roots.add(cert).map_err(|e| unusable(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(unusable("no certificate in it".to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| DoctorError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What `{ctx}/api/v1/configs` said about `kestra.url`.
#[derive(Debug, Clone)]
enum Configs {
    /// The `url` key (`None`: absent or null, `kestra.url` unset).
    Url(Option<String>),
    /// 401: Kestra's basic auth (mandatory since 0.24) wants credentials.
    Unauthorized {
        /// Whether credentials were sent.
        sent: bool,
    },
    /// Anything else: what went wrong.
    Unreadable(String),
}

impl Configs {
    fn url(&self) -> Option<&Option<String>> {
        match self {
            Configs::Url(url) => Some(url),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Configs::Url(Some(url)) => format!("{url:?}"),
            Configs::Url(None) => "no url (kestra.url unset)".to_owned(),
            Configs::Unauthorized { sent: true } => "401 with the credentials given".to_owned(),
            Configs::Unauthorized { sent: false } => "401 (basic auth)".to_owned(),
            Configs::Unreadable(why) => why.clone(),
        }
    }
}

/// Reads `url` from `{base}/api/v1/configs`; on a 401, tries again with `credentials`.
async fn read_configs(
    prober: &Prober,
    uri: Result<Uri, String>,
    credentials: Option<&HeaderValue>,
) -> Configs {
    let uri = match uri {
        Ok(uri) => uri,
        Err(err) => return Configs::Unreadable(err),
    };
    let mut answer = prober.get(uri.clone(), None).await;
    let mut sent = false;
    if let (Ok(a), Some(credentials)) = (&answer, credentials) {
        if a.status == StatusCode::UNAUTHORIZED {
            answer = prober.get(uri, Some(credentials)).await;
            sent = true;
        }
    }
    let answer = match answer {
        Ok(answer) => answer,
        Err(failure) => return Configs::Unreadable(failure.to_string()),
    };
    if answer.status == StatusCode::UNAUTHORIZED {
        return Configs::Unauthorized { sent };
    }
    if answer.status != StatusCode::OK {
        return Configs::Unreadable(format!("answered {}", answer.status));
    }
    match serde_json::from_slice::<serde_json::Value>(&answer.body) {
        Ok(serde_json::Value::Object(map)) => match map.get("url") {
            None | Some(serde_json::Value::Null) => Configs::Url(None),
            Some(serde_json::Value::String(url)) => Configs::Url(Some(url.clone())),
            Some(other) => Configs::Unreadable(format!("url is not a string: {other}")),
        },
        Ok(_) => Configs::Unreadable("the answer is JSON but not an object".to_owned()),
        Err(err) => Configs::Unreadable(format!("the answer is not JSON ({err})")),
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

fn public_url_finding(
    public: &PublicUrl,
    dropped: Option<&str>,
    intended: Option<&str>,
) -> Finding {
    let base = format!("{}{}/", public.origin, public.path);
    if let Some(dropped) = dropped {
        return Finding::problem(
            Check::PublicUrl,
            format!("ends in {dropped}, a path of Kestra's own; checked as {base}"),
            format!("give the URL users open Kestra at, without /ui or /api: {base}"),
        );
    }
    match intended {
        Some(ctx) if ctx != public.path => Finding::problem(
            Check::PublicUrl,
            format!(
                "its path is {}, --context-path is {}",
                shown(&public.path),
                shown(ctx)
            ),
            format!(
                "the gateway keeps the prefix (--prefix-mode keep), so users open Kestra at \
                 {}{ctx}/: use that public URL, or --context-path {}",
                public.origin,
                shown(&public.path)
            ),
        ),
        _ => Finding::ok(
            Check::PublicUrl,
            format!("{base} (context path {})", shown(&public.path)),
        ),
    }
}

/// What was learnt through the gateway.
struct GatewayView {
    /// The context path under which Kestra answered through the gateway.
    served: Option<String>,
    configs: Option<Configs>,
}

async fn check_gateway(
    prober: &Prober,
    public: &PublicUrl,
    ctx: &str,
    credentials: Option<&HeaderValue>,
    findings: &mut Vec<Finding>,
) -> Option<GatewayView> {
    let path = public.path.as_str();
    let ping_path = format!("{path}/ping");
    let ping = match public.at(&ping_path) {
        Ok(uri) => prober.get(uri, None).await,
        Err(err) => Err(Failure::Other(err)),
    };
    let ping = match ping {
        Ok(answer) => answer,
        Err(failure) => {
            let fix = match failure {
                Failure::Timeout(_) => "something accepts but does not answer: is it kestra-edge? \
                                        check firewalls and load balancers in front, or raise --timeout",
                _ => "is kestra-edge running and listening where the public URL's host and port \
                      lead (its --listen, DNS, load balancer, firewall)? with https, is its \
                      certificate trusted (--ca-file)?",
            };
            findings.push(Finding::problem(
                Check::Gateway,
                format!("GET {}{ping_path}: {failure}", public.origin),
                fix,
            ));
            for check in [Check::Ping, Check::ContextPath, Check::Redirect] {
                findings.push(Finding::skipped(check, "the gateway does not answer"));
            }
            return None;
        }
    };
    findings.push(Finding::ok(
        Check::Gateway,
        format!("{} answers", public.origin),
    ));

    let mut served = None;
    if ping.is_pong() {
        findings.push(Finding::ok(
            Check::Ping,
            format!("GET {ping_path} answered pong"),
        ));
        findings.push(Finding::ok(
            Check::ContextPath,
            format!("Kestra answers under {} through the gateway", shown(path)),
        ));
        served = Some(path.to_owned());
    } else if matches!(
        ping.status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        findings.push(Finding::problem(
            Check::Ping,
            format!(
                "GET {ping_path} answered {}: the gateway cannot reach Kestra",
                ping.status
            ),
            "check kestra-edge's --upstream (Kestra's webserver, port 8080 by default, not the \
             management port 8081) and that Kestra runs (doctor --upstream URL checks Kestra \
             directly)",
        ));
        findings.push(Finding::skipped(
            Check::ContextPath,
            "Kestra does not answer through the gateway",
        ));
    } else {
        findings.push(Finding::problem(
            Check::Ping,
            format!("GET {ping_path} answered {}, not pong", ping.status),
            "see the context path finding",
        ));
        served = find_served_path(prober, public, ctx, findings).await;
    }

    let Some(served) = served else {
        findings.push(Finding::skipped(
            Check::Redirect,
            "Kestra does not answer through the gateway",
        ));
        return Some(GatewayView {
            served: None,
            configs: None,
        });
    };
    let configs_uri = public.at(&format!("{served}/api/v1/configs"));
    let configs = read_configs(
        prober,
        configs_uri,
        credentials.filter(|_| public.may_send_credentials()),
    )
    .await;
    findings.push(redirect_finding(prober, public, &served).await);
    Some(GatewayView {
        served: Some(served),
        configs: Some(configs),
    })
}

/// `{ctx}/ping` did not answer through the gateway: where does Kestra answer instead?
async fn find_served_path(
    prober: &Prober,
    public: &PublicUrl,
    ctx: &str,
    findings: &mut Vec<Finding>,
) -> Option<String> {
    let path = public.path.as_str();
    let mut candidates = Vec::new();
    if !path.is_empty() {
        candidates.push(format!("{path}{path}"));
        candidates.push(String::new());
    }
    if ctx != path && !candidates.iter().any(|c| c == ctx) {
        candidates.push(ctx.to_owned());
    }
    for candidate in candidates {
        let Ok(uri) = public.at(&format!("{candidate}/ping")) else {
            continue;
        };
        if !prober.get(uri, None).await.is_ok_and(|a| a.is_pong()) {
            continue;
        }
        let finding = if !path.is_empty() && candidate == format!("{path}{path}") {
            Finding::problem(
                Check::ContextPath,
                format!(
                    "double prefix: Kestra answers at {candidate}/ping, not {path}/ping: Kestra \
                     serves under {path} and the gateway strips {path} before forwarding"
                ),
                format!(
                    "keep the prefix: run kestra-edge with --context-path {path} --prefix-mode keep \
                     (the default), not strip"
                ),
            )
        } else if candidate.is_empty() {
            Finding::problem(
                Check::ContextPath,
                format!("Kestra answers at /ping through the gateway, outside {path}"),
                format!(
                    "serve Kestra under {path}: micronaut.server.context-path: {path} in Kestra \
                     and --context-path {path} --prefix-mode keep in kestra-edge"
                ),
            )
        } else {
            Finding::problem(
                Check::ContextPath,
                format!(
                    "Kestra answers under {candidate} through the gateway, not under the public \
                     URL's {}",
                    shown(path)
                ),
                format!(
                    "users must open {}{candidate}/, or Kestra and kestra-edge must both use \
                     the context path {}",
                    public.origin,
                    shown(path)
                ),
            )
        };
        findings.push(finding);
        return Some(candidate);
    }
    findings.push(Finding::problem(
        Check::ContextPath,
        format!(
            "Kestra answers neither {}/ping nor any other likely path through the gateway",
            path
        ),
        format!(
            "check kestra-edge's --context-path ({}) and --upstream, and Kestra's \
             micronaut.server.context-path (doctor --upstream URL shows where Kestra \
             answers)",
            shown(path)
        ),
    ));
    None
}

/// `GET {served}/` must redirect inside the public context path (Kestra: `{ctx}/ui/`).
async fn redirect_finding(prober: &Prober, public: &PublicUrl, served: &str) -> Finding {
    let path = public.path.as_str();
    let asked = format!("{served}/");
    let answer = match public.at(&asked) {
        Ok(uri) => prober.get(uri, None).await,
        Err(err) => Err(Failure::Other(err)),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(failure) => {
            return Finding::problem(
                Check::Redirect,
                format!("GET {asked}: {failure}"),
                "see the other findings: the gateway answered /ping but not this",
            )
        }
    };
    let Some(location) = answer
        .location
        .as_deref()
        .filter(|_| answer.status.is_redirection())
    else {
        return Finding::problem(
            Check::Redirect,
            format!(
                "GET {asked} answered {}, not a redirect to {path}/ui/",
                answer.status
            ),
            "Kestra redirects {ctx}/ to {ctx}/ui/ unless its UI is off \
             (kestra.webserver.ui.enabled: false); check that this path reaches Kestra",
        );
    };
    // Absolute: it must stay on the public origin; relative: resolved against what was asked.
    let target = if location.starts_with("http://") || location.starts_with("https://") {
        match location
            .parse::<Uri>()
            .map_err(|e| e.to_string())
            .and_then(|u| Origin::of(&u).map(|(origin, _)| (origin, u.path().to_owned())))
        {
            Ok((origin, target)) if origin == public.origin => target,
            Ok((origin, _)) => {
                return Finding::problem(
                    Check::Redirect,
                    format!(
                        "GET {asked} redirects to {location}, off {}",
                        public.origin.0
                    ),
                    format!(
                        "Kestra builds absolute redirects from the request's Host and \
                         X-Forwarded-*: keep the client's Host (kestra-edge's default \
                         --host-header client) and let the gateway send X-Forwarded-Host and \
                         -Proto; {} is not the public origin (a login page of --forward-auth? then \
                         add --upstream URL to check Kestra directly)",
                        origin.0
                    ),
                );
            }
            Err(err) => {
                return Finding::problem(
                    Check::Redirect,
                    format!("GET {asked} redirects to {location:?}: {err}"),
                    "check what in front of Kestra rewrites Location",
                )
            }
        }
    } else if location.starts_with('/') {
        location
            .split(['?', '#'])
            .next()
            .unwrap_or(location)
            .to_owned()
    } else {
        format!("{asked}{location}")
    };
    if !path.is_empty() && target.starts_with(&format!("{path}{path}/")) {
        Finding::problem(
            Check::Redirect,
            format!("GET {asked} redirects to {location}: a double prefix"),
            format!(
                "Kestra serves under {path} and the gateway adds {path} again: run kestra-edge \
                 with --prefix-mode keep (the default), not strip"
            ),
        )
    } else if target.starts_with(&format!("{path}/")) {
        Finding::ok(
            Check::Redirect,
            format!(
                "GET {asked} redirects to {location}, inside {}",
                shown(path)
            ),
        )
    } else {
        Finding::problem(
            Check::Redirect,
            format!(
                "GET {asked} redirects to {location}, outside {}: the browser leaves the \
                 context path",
                shown(path)
            ),
            format!(
                "Kestra redirects to its own context path + /ui/: set \
                 micronaut.server.context-path: {} in Kestra and keep the prefix \
                 (--prefix-mode keep)",
                shown(path)
            ),
        )
    }
}

/// What was learnt from one upstream directly.
struct DirectView {
    upstream: String,
    configs: Option<Configs>,
}

async fn check_upstream(
    prober: &Prober,
    upstream: &Origin,
    ctx: &str,
    credentials: Option<&HeaderValue>,
    gateway: Option<&GatewayView>,
    findings: &mut Vec<Finding>,
) -> DirectView {
    let name = upstream.0.clone();
    let mut candidates = vec![ctx.to_owned()];
    if !ctx.is_empty() {
        candidates.push(String::new());
    }
    if let Some(served) = gateway.and_then(|g| g.served.as_deref()) {
        if !candidates.iter().any(|c| c == served) {
            candidates.push(served.to_owned());
        }
    }
    let mut actual = None;
    for (i, candidate) in candidates.iter().enumerate() {
        let answer = match upstream.at(&format!("{candidate}/ping")) {
            Ok(uri) => prober.get(uri, None).await,
            Err(err) => Err(Failure::Other(err)),
        };
        match answer {
            Err(failure) if i == 0 => {
                findings.push(Finding::problem(
                    Check::Upstream,
                    format!("GET {name}{candidate}/ping: {failure}"),
                    format!(
                        "is Kestra running, and its webserver listening at {name} (port 8080 by \
                         default)? from the gateway's host: curl {name}{candidate}/ping"
                    ),
                ));
                for check in [Check::UpstreamContextPath, Check::UpstreamKestraUrl] {
                    findings.push(Finding::skipped(check, format!("{name} does not answer")));
                }
                return DirectView {
                    upstream: name,
                    configs: None,
                };
            }
            Ok(answer) if answer.is_pong() => {
                actual = Some(candidate.clone());
                break;
            }
            _ => {}
        }
    }
    findings.push(Finding::ok(Check::Upstream, format!("{name} answers")));
    let Some(actual) = actual else {
        findings.push(Finding::problem(
            Check::UpstreamContextPath,
            format!(
                "{name} answers, but not pong at {}: is it Kestra's webserver?",
                candidates
                    .iter()
                    .map(|c| format!("{c}/ping"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "point --upstream at Kestra's webserver port (8080 by default, not the management \
             port 8081), and check micronaut.server.context-path",
        ));
        findings.push(Finding::skipped(
            Check::UpstreamKestraUrl,
            "no Kestra found",
        ));
        return DirectView {
            upstream: name,
            configs: None,
        };
    };
    if actual == ctx {
        findings.push(Finding::ok(
            Check::UpstreamContextPath,
            format!("Kestra at {name} serves under {}", shown(ctx)),
        ));
    } else {
        let fix = if ctx.is_empty() {
            format!(
                "remove micronaut.server.context-path from Kestra, or use a public URL ending \
                 in {actual}/"
            )
        } else {
            format!(
                "set micronaut.server.context-path: {ctx} in Kestra (stripping the prefix in \
                 front of a Kestra without it breaks its UI, which builds its paths from its \
                 context path) and run kestra-edge with --context-path {ctx} --prefix-mode keep"
            )
        };
        findings.push(Finding::problem(
            Check::UpstreamContextPath,
            format!(
                "Kestra at {name} serves under {}, the public context path is {}",
                shown(&actual),
                shown(ctx)
            ),
            fix,
        ));
    }
    let configs = read_configs(
        prober,
        upstream.at(&format!("{actual}/api/v1/configs")),
        credentials,
    )
    .await;
    let through_gateway = gateway
        .and_then(|g| g.configs.as_ref())
        .and_then(Configs::url);
    let finding = match (&configs, through_gateway) {
        (Configs::Url(direct), Some(seen)) if direct == seen => Finding::ok(
            Check::UpstreamKestraUrl,
            format!(
                "{name} reports the same as the gateway: {}",
                configs_url_text(direct)
            ),
        ),
        (Configs::Url(direct), Some(seen)) => Finding::problem(
            Check::UpstreamKestraUrl,
            format!(
                "{name} reports {}, through the gateway Kestra reports {}",
                configs_url_text(direct),
                configs_url_text(seen)
            ),
            "the gateway reaches another Kestra than this one, or the replicas differ: give every \
             replica the same kestra.url and check kestra-edge's --upstream",
        ),
        (Configs::Url(direct), None) => Finding::ok(
            Check::UpstreamKestraUrl,
            format!("{name} reports {}", configs_url_text(direct)),
        ),
        (Configs::Unauthorized { sent }, _) => Finding::problem(
            Check::UpstreamKestraUrl,
            format!("GET {name}{actual}/api/v1/configs: {}", configs.describe()),
            credentials_fix(*sent),
        ),
        (Configs::Unreadable(why), _) => Finding::problem(
            Check::UpstreamKestraUrl,
            format!("GET {name}{actual}/api/v1/configs: {why}"),
            "is this Kestra's webserver? /api/v1/configs answers its configuration as JSON",
        ),
    };
    findings.push(finding);
    DirectView {
        upstream: name,
        configs: Some(configs),
    }
}

fn configs_url_text(url: &Option<String>) -> String {
    match url {
        Some(url) => format!("{url:?}"),
        None => "no kestra.url".to_owned(),
    }
}

fn credentials_fix(sent: bool) -> &'static str {
    if sent {
        "the credentials were refused: check the user:password in --kestra-credentials-file"
    } else {
        "Kestra's basic auth guards /api/v1/configs: pass --kestra-credentials-file FILE \
         (one line user:password; sent through the public URL only when it is https or \
         loopback), or add --upstream URL to read it directly"
    }
}

/// `kestra.url` from the gateway's answer, or else from the first upstream that told it.
fn kestra_url_finding(
    gateway: Option<&GatewayView>,
    direct: &[DirectView],
    expected: &str,
    ctx: &str,
    have_credentials: bool,
) -> Finding {
    let from_gateway = gateway.and_then(|g| g.configs.as_ref()).and_then(|c| {
        c.url()
            .map(|u| (u.clone(), "through the gateway".to_owned()))
    });
    let from_upstream = || {
        direct.iter().find_map(|d| {
            d.configs
                .as_ref()
                .and_then(|c| c.url())
                .map(|u| (u.clone(), format!("from {}", d.upstream)))
        })
    };
    let Some((url, source)) = from_gateway.or_else(from_upstream) else {
        let why = gateway
            .and_then(|g| g.configs.as_ref())
            .map(Configs::describe)
            .unwrap_or_else(|| "Kestra does not answer through the gateway".to_owned());
        let unauthorized = match gateway.and_then(|g| g.configs.as_ref()) {
            Some(Configs::Unauthorized { sent }) => Some(*sent),
            _ => None,
        };
        let fix = if let Some(sent) = unauthorized {
            if !sent && have_credentials {
                "the credentials are not sent over plain http to a public URL that is not \
                 loopback: add --upstream URL to read kestra.url from Kestra directly"
            } else {
                credentials_fix(sent)
            }
        } else {
            "fix the findings above first, or add --upstream URL to read it from Kestra directly"
        };
        return if gateway.is_some_and(|g| g.configs.is_some()) {
            Finding::problem(
                Check::KestraUrl,
                format!("cannot read /api/v1/configs: {why}"),
                fix,
            )
        } else {
            Finding::skipped(
                Check::KestraUrl,
                format!("cannot read /api/v1/configs: {why}"),
            )
        };
    };
    let Some(url) = url else {
        return Finding::problem(
            Check::KestraUrl,
            format!("not set ({source}): links in notifications cannot point at Kestra"),
            format!("set kestra.url: {expected}"),
        );
    };
    match kestra_url_mismatch(&url, expected, ctx) {
        None => Finding::ok(Check::KestraUrl, format!("{url} ({source})")),
        Some(why) => Finding::problem(
            Check::KestraUrl,
            format!("{url:?} ({source}): {why}"),
            format!("set kestra.url: {expected}"),
        ),
    }
}

/// Why `actual` is not the public URL `expected` with its trailing slash (None: it is).
/// Scheme and host compare case-insensitively and a default port is the same as none.
fn kestra_url_mismatch(actual: &str, expected: &str, ctx: &str) -> Option<String> {
    let uri: Uri = match actual.trim().parse() {
        Ok(uri) => uri,
        Err(err) => return Some(format!("not a URL ({err})")),
    };
    let origin = match Origin::of(&uri) {
        Ok((origin, _)) => origin,
        Err(err) => return Some(format!("not a URL Kestra can link to ({err})")),
    };
    let mut why = Vec::new();
    let expected_origin = expected
        .strip_suffix(&format!("{ctx}/"))
        .unwrap_or(expected);
    if origin.0 != expected_origin {
        why.push(format!(
            "its origin is {}, the public URL's is {expected_origin}",
            origin.0
        ));
    }
    let path = uri.path();
    let bare = path.trim_end_matches('/');
    let (bare, kestra_suffix) = match ["/ui", "/api"].iter().find_map(|marker| {
        bare.find(&format!("{marker}/"))
            .or_else(|| bare.ends_with(marker).then(|| bare.len() - marker.len()))
    }) {
        Some(at) => (&bare[..at], Some(&bare[at..])),
        None => (bare, None),
    };
    if let Some(suffix) = kestra_suffix {
        why.push(format!(
            "it ends in {suffix}: Kestra appends /ui/… itself, so links get {suffix}/ui/…"
        ));
    }
    if bare != ctx {
        if !ctx.is_empty() && bare == format!("{ctx}{ctx}") {
            why.push(format!("its path {bare} has the context path twice"));
        } else {
            why.push(format!(
                "its path is {}, the public context path is {}",
                shown(bare),
                shown(ctx)
            ));
        }
    }
    if kestra_suffix.is_none() && !path.ends_with('/') {
        why.push("no trailing slash (Kestra's documentation requires one)".to_owned());
    }
    if uri.query().is_some() {
        why.push("it has a query string".to_owned());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kestra_url_rules() {
        let expected = "https://kestra.example.com/kestra/";
        let ok = [
            "https://kestra.example.com/kestra/",
            "HTTPS://Kestra.Example.com:443/kestra/",
        ];
        for url in ok {
            assert_eq!(kestra_url_mismatch(url, expected, "/kestra"), None, "{url}");
        }
        let wrong = [
            ("https://kestra.example.com/kestra", "trailing slash"),
            ("https://kestra.example.com/kestra/ui/", "ends in /ui"),
            (
                "https://kestra.example.com/kestra/api/v1",
                "ends in /api/v1",
            ),
            ("http://kestra.example.com/kestra/", "origin"),
            ("https://other.example.com/kestra/", "origin"),
            ("https://kestra.example.com:8443/kestra/", "origin"),
            ("https://kestra.example.com/", "path is /"),
            ("https://kestra.example.com/kestra/kestra/", "twice"),
            ("kestra.example.com/kestra/", "not a URL"),
            ("", "not a URL"),
        ];
        for (url, why) in wrong {
            let found = kestra_url_mismatch(url, expected, "/kestra");
            assert!(
                found.as_deref().is_some_and(|f| f.contains(why)),
                "{url}: {found:?}"
            );
        }
        assert_eq!(
            kestra_url_mismatch("http://127.0.0.1:8000/", "http://127.0.0.1:8000/", ""),
            None
        );
    }

    #[test]
    fn public_url_parsing() {
        let (url, dropped) = PublicUrl::parse("https://K.example.com:443/kestra/").unwrap();
        assert_eq!(
            (url.origin.0.as_str(), url.path.as_str()),
            ("https://k.example.com", "/kestra")
        );
        assert!(dropped.is_none());
        let (url, dropped) = PublicUrl::parse("http://h:8000/kestra/ui/flows").unwrap();
        assert_eq!(
            (url.path.as_str(), dropped.as_deref()),
            ("/kestra", Some("/ui/flows"))
        );
        let (url, dropped) = PublicUrl::parse("http://h/api").unwrap();
        assert_eq!((url.path.as_str(), dropped.as_deref()), ("", Some("/api")));
        let (url, _) = PublicUrl::parse("http://h/uikit/").unwrap();
        assert_eq!(url.path, "/uikit");
        for bad in [
            "h/kestra",
            "ftp://h/",
            "http:///x",
            "http://h/a//b",
            "http://h/?q=1",
            "http://u@h/",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_context_path("kestra/").unwrap(), "/kestra");
        assert_eq!(parse_context_path("/").unwrap(), "");
        assert!(parse_context_path("/a/../b").is_err());
        assert!(Origin::parse_upstream("http://kestra:8080/kestra").is_err());
        assert_eq!(
            Origin::parse_upstream("http://[::1]:8080/").unwrap().host(),
            "::1"
        );
    }

    #[test]
    fn yaml_and_flags() {
        let report = Report {
            findings: Vec::new(),
            public_url: "https://k.example.com/kestra/".to_owned(),
            context_path: "/kestra".to_owned(),
            kestra_url: "https://k.example.com/kestra/".to_owned(),
            upstreams: vec!["http://kestra:8080".to_owned()],
            https: true,
        };
        assert_eq!(
            report.kestra_yaml(),
            "kestra:\n  url: https://k.example.com/kestra/\nmicronaut:\n  server:\n    context-path: /kestra\n"
        );
        assert!(report
            .gateway_flags()
            .starts_with("kestra-edge --upstream http://kestra:8080 --context-path /kestra --prefix-mode keep --tls-cert"));
    }
}
