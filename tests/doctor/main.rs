//! `kestra-edge doctor` end to end: the stand-in (a Kestra whose `kestra.url` each test sets)
//! behind the real gateway on `127.0.0.1:0`, checked through the gateway and directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge_gateway::{
    doctor::{self, Check, DoctorArgs, Report, Status},
    GatewayConfig, PrefixModeArg,
};
use kestra_edge_standin::StandinConfig;
use kestra_edge_tests::{closed_port, RawUpstream, RunningGateway, Stack};
use std::{process::ExitCode, time::Duration};
use tokio::io::AsyncWriteExt;

const TIMEOUT: Duration = Duration::from_secs(2);

fn args(public_url: &str, upstream: Option<&str>) -> DoctorArgs {
    DoctorArgs {
        public_url: public_url.to_owned(),
        upstream: upstream.into_iter().map(str::to_owned).collect(),
        context_path: None,
        timeout: TIMEOUT,
        ca_file: Vec::new(),
        kestra_credentials_file: None,
    }
}

/// Kestra with `micronaut.server.context-path: /kestra` behind the gateway, with `mode`.
async fn kestra_behind_gateway(standin_ctx: &str, mode: PrefixModeArg) -> Stack {
    let standin = StandinConfig {
        context_path: standin_ctx.to_owned(),
        ..StandinConfig::default()
    };
    Stack::start_standin_with(standin, |c| {
        c.prefix.context_path = Some("/kestra".to_owned());
        c.prefix.mode = mode;
    })
    .await
}

fn public_url(stack: &Stack) -> String {
    stack.url("/kestra/")
}

/// The exit status of `doctor`, its report kept out of the test's output.
async fn run(args: DoctorArgs) -> ExitCode {
    let mut out = Vec::new();
    let code = doctor::run_to(args, &mut out).await;
    if code != ExitCode::from(2) {
        assert!(String::from_utf8(out).unwrap().contains("kestra.url"));
    }
    code
}

async fn diagnose(args: &DoctorArgs) -> Report {
    doctor::diagnose(args).await.unwrap()
}

fn status(report: &Report, check: Check) -> Status {
    report
        .finding(check)
        .unwrap_or_else(|| panic!("no {check} finding in\n{report}"))
        .status
}

fn summary(report: &Report, check: Check) -> &str {
    &report.finding(check).unwrap().summary
}

#[tokio::test]
async fn right_kestra_url_every_check_ok_and_exit_0() {
    let stack = kestra_behind_gateway("/kestra", PrefixModeArg::Keep).await;
    let public = public_url(&stack);
    stack.standin.control().set_kestra_url(Some(public.clone()));
    let upstream = stack.standin.url();
    let args = args(&public, Some(&upstream));

    let report = diagnose(&args).await;
    assert!(report.is_ok(), "{report}");
    for check in [
        Check::PublicUrl,
        Check::Gateway,
        Check::Ping,
        Check::KestraUrl,
        Check::ContextPath,
        Check::Redirect,
        Check::Upstream,
        Check::UpstreamContextPath,
        Check::UpstreamKestraUrl,
    ] {
        assert_eq!(status(&report, check), Status::Ok, "{check}\n{report}");
    }
    assert!(summary(&report, Check::Redirect).contains("/kestra/ui/"));
    assert_eq!(
        report.kestra_yaml(),
        format!("kestra:\n  url: {public}\nmicronaut:\n  server:\n    context-path: /kestra\n")
    );
    assert_eq!(
        report.gateway_flags(),
        format!("kestra-edge --upstream {upstream} --context-path /kestra --prefix-mode keep")
    );
    assert_eq!(run(args).await, ExitCode::SUCCESS);
}

#[tokio::test]
async fn wrong_kestra_url_is_a_problem_with_its_reason_and_exit_1() {
    let stack = kestra_behind_gateway("/kestra", PrefixModeArg::Keep).await;
    let public = public_url(&stack);
    let origin = public.trim_end_matches("/kestra/").to_owned();
    let cases = [
        (
            Some(public.trim_end_matches('/').to_owned()),
            "no trailing slash",
        ),
        (Some(format!("{public}ui/")), "ends in /ui"),
        (Some(format!("{public}api/v1/")), "ends in /api/v1"),
        (
            Some("https://kestra.example.com/kestra/".to_owned()),
            "its origin is https://kestra.example.com",
        ),
        (
            Some(format!("{origin}/kestra/kestra/")),
            "context path twice",
        ),
        (Some(format!("{origin}/")), "its path is /,"),
        (None, "not set"),
    ];
    for (url, reason) in cases {
        stack.standin.control().set_kestra_url(url.clone());
        let args = args(&public, None);
        let report = diagnose(&args).await;
        assert!(!report.is_ok(), "{url:?}\n{report}");
        let finding = report.finding(Check::KestraUrl).unwrap();
        assert_eq!(finding.status, Status::Problem, "{url:?}\n{report}");
        assert!(finding.summary.contains(reason), "{url:?}: {report}");
        assert_eq!(
            finding.fix.as_deref(),
            Some(format!("set kestra.url: {public}").as_str())
        );
        // Only kestra.url is wrong.
        let problems: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.status != Status::Ok)
            .map(|f| f.check)
            .collect();
        assert_eq!(problems, [Check::KestraUrl], "{report}");
        assert_eq!(run(args).await, ExitCode::from(1));
    }
}

#[tokio::test]
async fn double_prefix_is_found_through_the_gateway() {
    // Kestra already serves under /kestra, and the gateway strips /kestra before forwarding:
    // Kestra's paths appear at /kestra/kestra/….
    let stack = kestra_behind_gateway("/kestra", PrefixModeArg::Strip).await;
    let public = public_url(&stack);
    stack.standin.control().set_kestra_url(Some(public.clone()));
    let args = args(&public, None);

    let report = diagnose(&args).await;
    assert_eq!(status(&report, Check::Ping), Status::Problem, "{report}");
    let context = report.finding(Check::ContextPath).unwrap();
    assert_eq!(context.status, Status::Problem);
    assert!(context.summary.contains("double prefix"), "{report}");
    assert!(context.summary.contains("/kestra/kestra/ping"), "{report}");
    assert!(context
        .fix
        .as_deref()
        .unwrap()
        .contains("--prefix-mode keep"));
    let redirect = report.finding(Check::Redirect).unwrap();
    assert_eq!(redirect.status, Status::Problem, "{report}");
    assert!(redirect.summary.contains("/kestra/kestra/ui/"), "{report}");
    // kestra.url itself is right, read where Kestra does answer.
    assert_eq!(status(&report, Check::KestraUrl), Status::Ok, "{report}");
    assert_eq!(run(args).await, ExitCode::from(1));
}

#[tokio::test]
async fn stripping_in_front_of_kestra_without_context_path_is_found_with_upstream() {
    // Through the gateway all looks right (it maps the redirect back under /kestra); only
    // Kestra itself shows that it has no context path, which breaks its UI.
    let stack = kestra_behind_gateway("/", PrefixModeArg::Strip).await;
    let public = public_url(&stack);
    stack.standin.control().set_kestra_url(Some(public.clone()));

    let through_gateway = diagnose(&args(&public, None)).await;
    assert!(through_gateway.is_ok(), "{through_gateway}");

    let upstream = stack.standin.url();
    let report = diagnose(&args(&public, Some(&upstream))).await;
    let finding = report.finding(Check::UpstreamContextPath).unwrap();
    assert_eq!(finding.status, Status::Problem, "{report}");
    assert!(finding.summary.contains("serves under /,"), "{report}");
    assert!(finding
        .fix
        .as_deref()
        .unwrap()
        .contains("micronaut.server.context-path: /kestra"));
    assert_eq!(
        status(&report, Check::UpstreamKestraUrl),
        Status::Ok,
        "{report}"
    );
    assert!(!report.is_ok());
}

#[tokio::test]
async fn unreachable_upstream_is_a_problem_and_exit_1() {
    let dead = format!("http://{}", closed_port().await);
    let mut config = GatewayConfig::for_upstream(dead.clone());
    config.prefix.context_path = Some("/kestra".to_owned());
    let gateway = RunningGateway::start(config).await;
    let public = gateway.url("/kestra/");
    let args = args(&public, Some(&dead));

    let report = diagnose(&args).await;
    assert_eq!(status(&report, Check::Gateway), Status::Ok, "{report}");
    let ping = report.finding(Check::Ping).unwrap();
    assert_eq!(ping.status, Status::Problem, "{report}");
    assert!(ping.summary.contains("502"), "{report}");
    assert!(ping.summary.contains("cannot reach Kestra"), "{report}");
    let upstream = report.finding(Check::Upstream).unwrap();
    assert_eq!(upstream.status, Status::Problem, "{report}");
    assert!(upstream.summary.contains("cannot connect"), "{report}");
    for check in [
        Check::UpstreamContextPath,
        Check::UpstreamKestraUrl,
        Check::Redirect,
    ] {
        assert_eq!(status(&report, check), Status::Skipped, "{check}\n{report}");
    }
    assert_eq!(run(args).await, ExitCode::from(1));

    // Nothing at the public URL at all.
    let report = diagnose(&args_for_closed_gateway().await).await;
    let gateway = report.finding(Check::Gateway).unwrap();
    assert_eq!(gateway.status, Status::Problem, "{report}");
    assert!(gateway.summary.contains("cannot connect"), "{report}");
}

async fn args_for_closed_gateway() -> DoctorArgs {
    args(&format!("http://{}/kestra/", closed_port().await), None)
}

#[tokio::test]
async fn hostile_answers_are_findings_not_panics() {
    // `pong` to every path: /ping is right, configs is not JSON, / is not a redirect.
    let pong = RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong").await;
    let report = diagnose(&args(&format!("{}/", pong.url()), None)).await;
    assert_eq!(status(&report, Check::Ping), Status::Ok, "{report}");
    assert!(
        summary(&report, Check::KestraUrl).contains("not JSON"),
        "{report}"
    );
    assert_eq!(
        status(&report, Check::Redirect),
        Status::Problem,
        "{report}"
    );

    // JSON, but `url` is a number.
    let odd =
        RawUpstream::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"url\":42}").await;
    let report = diagnose(&args(&format!("{}/", odd.url()), None)).await;
    assert!(!report.is_ok());

    // A body far over the cap, announced and streamed: read up to the cap only.
    let huge = RawUpstream::start(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1600 {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
    })
    .await;
    let report = diagnose(&args(&format!("{}/", huge.url()), None)).await;
    let gateway = report.finding(Check::Gateway).unwrap();
    assert_eq!(gateway.status, Status::Problem, "{report}");
    assert!(gateway.summary.contains("larger than"), "{report}");

    // Accepts, reads the request, never answers: the deadline ends it.
    let silent = RawUpstream::start(|stream| async move {
        std::future::pending::<()>().await;
        drop(stream);
    })
    .await;
    let mut quick = args(&format!("{}/", silent.url()), None);
    quick.timeout = Duration::from_millis(200);
    let report = diagnose(&quick).await;
    let gateway = report.finding(Check::Gateway).unwrap();
    assert_eq!(gateway.status, Status::Problem, "{report}");
    assert!(
        gateway.summary.contains("no answer within 200ms"),
        "{report}"
    );
}

#[tokio::test]
async fn unusable_arguments_are_errors_not_findings() {
    for public in ["kestra.example.com/kestra/", "ftp://h/", "http://h/a//b"] {
        assert!(
            doctor::diagnose(&args(public, None)).await.is_err(),
            "{public}"
        );
    }
    let mut bad = args("http://127.0.0.1:1/", None);
    bad.context_path = Some("/a/../b".to_owned());
    assert!(doctor::diagnose(&bad).await.is_err());
    assert_eq!(run(bad).await, ExitCode::from(2));
}

/// A CA and a certificate it signed for `localhost`, as PEM: (CA, leaf, leaf key).
fn pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kestra-edge doctor test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

#[tokio::test]
async fn https_public_url_is_verified_against_the_ca_files() {
    let (ca, cert, key) = pki();
    let dir = std::env::temp_dir().join(format!(
        "kestra-edge-doctor-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let standin = kestra_edge_standin::Standin::start(StandinConfig::default())
        .await
        .unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.prefix.context_path = Some("/kestra".to_owned());
    config.tls.cert_file = Some(dir.join("tls.crt"));
    config.tls.key_file = Some(dir.join("tls.key"));
    let gateway = RunningGateway::start(config).await;
    let public = format!("https://localhost:{}/kestra/", gateway.addr.port());
    standin.control().set_kestra_url(Some(public.clone()));

    let mut trusted = args(&public, None);
    trusted.ca_file = vec![dir.join("ca.crt")];
    let report = diagnose(&trusted).await;
    assert!(report.is_ok(), "{report}");
    assert!(report.gateway_flags().contains("--tls-cert"));

    // Without the CA, the certificate is not trusted: a finding that names it.
    let report = diagnose(&args(&public, None)).await;
    let gateway_finding = report.finding(Check::Gateway).unwrap();
    assert_eq!(gateway_finding.status, Status::Problem, "{report}");
    assert!(gateway_finding.summary.contains("certificate"), "{report}");
    assert!(gateway_finding
        .fix
        .as_deref()
        .unwrap()
        .contains("--ca-file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn credentials_file_must_hold_user_and_password() {
    let path = std::env::temp_dir().join(format!(
        "kestra-edge-doctor-credentials-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    ));
    std::fs::write(&path, "just-a-user\n").unwrap();
    let mut bad = args("http://127.0.0.1:1/", None);
    bad.kestra_credentials_file = Some(path.clone());
    let err = doctor::diagnose(&bad).await.unwrap_err();
    assert!(err.to_string().contains("user:password"), "{err}");
    let _ = std::fs::remove_file(&path);
}

/// A Kestra 0.24+ in miniature on raw TCP, at the root: `/ping` open, `/api/v1/configs`
/// behind basic auth (`admin:secret`), `/` answered `307` to `/ui/` as its
/// `RedirectController` does.
async fn kestra_with_basic_auth() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let target = head[0].split(' ').nth(1).unwrap_or("").to_owned();
                // base64("admin:secret")
                let authorized = head
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case("authorization: Basic YWRtaW46c2VjcmV0"));
                let url = format!("http://{addr}/");
                let json = format!("{{\"version\":\"1.0.0\",\"url\":\"{url}\"}}");
                let (status, extra, body) = match target.as_str() {
                    "/ping" => ("200 OK", String::new(), "pong".to_owned()),
                    "/" => (
                        "307 Temporary Redirect",
                        "Location: /ui/\r\n".to_owned(),
                        String::new(),
                    ),
                    "/api/v1/configs" if authorized => ("200 OK", String::new(), json),
                    "/api/v1/configs" => (
                        "401 Unauthorized",
                        "WWW-Authenticate: Basic\r\n".to_owned(),
                        String::new(),
                    ),
                    _ => ("404 Not Found", String::new(), String::new()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.get_mut().write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn basic_auth_on_configs_needs_the_credentials_file() {
    let (addr, task) = kestra_with_basic_auth().await;
    let public = format!("http://{addr}/");

    let report = diagnose(&args(&public, None)).await;
    assert_eq!(status(&report, Check::Redirect), Status::Ok, "{report}");
    let finding = report.finding(Check::KestraUrl).unwrap();
    assert_eq!(finding.status, Status::Problem, "{report}");
    assert!(finding.summary.contains("401"), "{report}");
    assert!(finding
        .fix
        .as_deref()
        .unwrap()
        .contains("--kestra-credentials-file"));

    let path = std::env::temp_dir().join(format!(
        "kestra-edge-doctor-auth-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    ));
    std::fs::write(&path, "admin:secret\n").unwrap();
    let mut with_credentials = args(&public, None);
    with_credentials.kestra_credentials_file = Some(path.clone());
    let report = diagnose(&with_credentials).await;
    assert!(report.is_ok(), "{report}");

    std::fs::write(&path, "admin:wrong\n").unwrap();
    let report = diagnose(&with_credentials).await;
    let finding = report.finding(Check::KestraUrl).unwrap();
    assert_eq!(finding.status, Status::Problem, "{report}");
    assert!(
        finding.fix.as_deref().unwrap().contains("refused"),
        "{report}"
    );
    let _ = std::fs::remove_file(&path);
    task.abort();
}
