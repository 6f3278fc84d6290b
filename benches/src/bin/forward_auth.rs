//! Forward authentication under load, in one run: a small GET (`/kestra/ui/`, 80 bytes) with a
//! session cookie through kestra-edge with `--forward-auth` (allow cache off, then on) and
//! through nginx `auth_request` pointed at the same auth stand-in, beside both without
//! auth. Every process gets one worker; the Kestra stand-in and the auth stand-in run in a
//! child process of their own; the load comes from this one.
//!
//! ```sh
//! cargo run --release -p kestra-edge-bench --bin forward_auth -- --seconds 5 --connections 32
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use kestra_edge::server::IncomingBody;
use kestra_edge::server::Server;
use kestra_edge_gateway::{Args as GatewayArgs, Gateway, GatewayConfig};
use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The small GET every target serves.
const PATH: &str = "/kestra/ui/";

#[derive(Debug, Parser)]
struct Cli {
    /// Seconds of measured load per target (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The nginx binary [default: nginx on the PATH, or /usr/sbin/nginx].
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// A serving mode of this binary (used by the run itself).
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// The rest: the gateway's flags in `--serve gateway` mode.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    match cli.serve.as_deref() {
        Some("backends") => serve_backends(),
        Some("gateway") => serve_gateway(&cli.rest),
        Some(other) => Err(format!("unknown serving mode {other}").into()),
        None => run(&cli),
    }
}

/// Prints `listening ADDR…` and serves until stdin closes.
fn announce(addrs: &[SocketAddr]) {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    println!("listening {}", list.join(" "));
    let _ = std::io::stdout().flush();
}

async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await;
}

/// The Kestra stand-in and the auth stand-in: 200 with `X-Auth-Request-User` for the cookie
/// `session=good`, else 401; `GET /count` answers how many checks it answered.
fn serve_backends() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let standin = kestra_edge_standin::Standin::start(Default::default()).await?;
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?
            .shutdown_grace(Duration::ZERO);
        let auth = server.local_addr()?;
        let checks = Arc::new(AtomicU64::new(0));
        let service = tower::service_fn(move |req: Request<IncomingBody>| {
            let checks = checks.clone();
            async move {
                if req.uri().path() == "/count" {
                    let count = checks.load(Ordering::Relaxed).to_string();
                    return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(count))));
                }
                checks.fetch_add(1, Ordering::Relaxed);
                let allowed = req
                    .headers()
                    .get_all(http::header::COOKIE)
                    .iter()
                    .any(|v| v.as_bytes().windows(12).any(|w| w == b"session=good"));
                let mut response = Response::new(Full::new(Bytes::new()));
                if allowed {
                    response.headers_mut().insert(
                        "x-auth-request-user",
                        http::HeaderValue::from_static("alice"),
                    );
                } else {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok(response)
            }
        });
        announce(&[standin.addr(), auth]);
        server.serve(service, stdin_closed()).await?;
        drop(standin);
        Ok(())
    })
}

fn serve_gateway(flags: &[String]) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let args = <GatewayArgs as Parser>::try_parse_from(
            std::iter::once("kestra-edge".to_owned()).chain(flags.iter().cloned()),
        )?;
        let mut config = GatewayConfig::from_args(args)?;
        config.listener.shutdown_grace = Duration::ZERO;
        let gateway = Gateway::bind(config).await?;
        announce(&[gateway.local_addr()?]);
        gateway.serve(stdin_closed()).await?;
        Ok(())
    })
}

/// A child process serving until it is dropped.
struct Served {
    child: Child,
    addrs: Vec<SocketAddr>,
    _dir: Option<PathBuf>,
}

impl Served {
    fn this_binary(args: &[String]) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addrs = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected child output {line:?}"))?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            child,
            addrs,
            _dir: None,
        })
    }

    /// nginx with one worker, `auth_request` to `auth` when given, keep-alive both ways.
    fn nginx(
        nginx: &PathBuf,
        upstream: SocketAddr,
        auth: Option<SocketAddr>,
    ) -> Result<Self, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "kestra-edge-auth-bench-{}-{port}",
            std::process::id()
        ));
        for sub in ["logs", "client_body", "proxy_temp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let check = match auth {
            Some(_) => {
                "auth_request /_auth;\n            auth_request_set $user $upstream_http_x_auth_request_user;\n            proxy_set_header X-Auth-Request-User $user;"
            }
            None => "",
        };
        let auth_location = if auth.is_some() {
            r#"location = /_auth {
            internal;
            proxy_pass http://auth/oauth2/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Uri $request_uri;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"#
        } else {
            ""
        };
        let auth_upstream = auth
            .map(|auth| format!("upstream auth {{ server {auth}; keepalive 32; }}"))
            .unwrap_or_default();
        let conf = format!(
            r#"user root;
worker_processes 1;
daemon off;
pid nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path client_body;
    proxy_temp_path proxy_temp;
    upstream kestra {{ server {upstream}; keepalive 32; }}
    {auth_upstream}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {check}
            proxy_pass http://kestra;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
        {auth_location}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("nginx did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            addrs: vec![addr],
            _dir: Some(dir),
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

struct Load {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// One keep-alive connection sending the small GET until `deadline`.
async fn connection(addr: SocketAddr, deadline: Instant, record: bool) -> Result<Load, BoxError> {
    let connect = || async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok::<_, BoxError>(sender)
    };
    let mut sender = connect().await?;
    let mut load = Load {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    while Instant::now() < deadline {
        let request = Request::get(PATH)
            .header("host", addr.to_string())
            .header("cookie", "session=good; theme=dark")
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        // A server may close a keep-alive connection after its last answer: connect again.
        if sender.ready().await.is_err() {
            sender = connect().await?;
            sender.ready().await?;
        }
        let response = sender.send_request(request).await?;
        let ok = response.status() == StatusCode::OK;
        let _ = response.into_body().collect().await?;
        if record {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = load.latency.record(micros.max(1));
            load.requests += 1;
            if !ok {
                load.errors += 1;
            }
        }
    }
    Ok(load)
}

/// One second of the same load, not recorded: pools filled, caches primed.
async fn warm_up(addr: SocketAddr, connections: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(connection(addr, deadline, false));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

async fn measure(addr: SocketAddr, connections: usize, seconds: u64) -> Result<Load, BoxError> {
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    for _ in 0..connections {
        tasks.spawn(connection(addr, deadline, true));
    }
    let mut total = Load {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    while let Some(done) = tasks.join_next().await {
        let load = done??;
        total.requests += load.requests;
        total.errors += load.errors;
        total.latency.add(&load.latency)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

async fn auth_checks(auth: SocketAddr) -> Result<u64, BoxError> {
    let stream = tokio::net::TcpStream::connect(auth).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::get("/count")
        .header("host", auth.to_string())
        .body(Empty::<Bytes>::new())?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).trim().parse()?)
}

/// Starts one target.
type Starter<'a> = Box<dyn Fn() -> Result<Served, BoxError> + 'a>;

fn run(cli: &Cli) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let backends = Served::this_binary(&["--serve".to_owned(), "backends".to_owned()])?;
    let (upstream, auth) = (backends.addrs[0], backends.addrs[1]);
    let auth_url = format!("http://{auth}/oauth2/auth");
    let gateway = |extra: &[&str]| -> Result<Served, BoxError> {
        let mut args: Vec<String> = ["--serve", "gateway", "--", "--listen", "127.0.0.1:0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(
            [
                "--upstream",
                &format!("http://{upstream}"),
                "--context-path",
                "/kestra",
                "--workers",
                "1",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Served::this_binary(&args)
    };
    let nginx = cli
        .nginx
        .clone()
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nginx"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()));

    let auth_flags = [
        "--forward-auth",
        auth_url.as_str(),
        "--auth-response-header",
        "X-Auth-Request-User",
    ];
    let mut cached = auth_flags.to_vec();
    cached.extend(["--forward-auth-cache", "60s"]);
    println!(
        "Small GET {PATH} with a session cookie, {} connections, {} s per target, one worker each\n",
        cli.connections, cli.seconds
    );
    println!("| target | requests/s | p50 | p99 | auth checks per request | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(&str, Starter<'_>)> = vec![
        ("kestra-edge, no auth", Box::new(|| gateway(&[]))),
        (
            "kestra-edge, forward auth",
            Box::new(|| gateway(&auth_flags)),
        ),
        (
            "kestra-edge, forward auth, cache 60s",
            Box::new(|| gateway(&cached)),
        ),
    ];
    if let Some(nginx) = nginx {
        let (n1, n2) = (nginx.clone(), nginx);
        rows.push((
            "nginx, no auth",
            Box::new(move || Served::nginx(&n1, upstream, None)),
        ));
        rows.push((
            "nginx auth_request",
            Box::new(move || Served::nginx(&n2, upstream, Some(auth))),
        ));
    }
    for (name, start) in rows {
        let served = start()?;
        let addr = served.addrs[0];
        let (load, checks) = runtime.block_on(async {
            warm_up(addr, cli.connections).await?;
            let before = auth_checks(auth).await?;
            let load = measure(addr, cli.connections, cli.seconds).await?;
            let after = auth_checks(auth).await?;
            Ok::<_, BoxError>((load, after - before))
        })?;
        drop(served);
        let per_second = load.requests as f64 / load.elapsed.as_secs_f64();
        let per_request = checks as f64 / load.requests.max(1) as f64;
        println!(
            "| {name} | {per_second:.0} | {} µs | {} µs | {per_request:.3} | {} |",
            load.latency.value_at_quantile(0.5),
            load.latency.value_at_quantile(0.99),
            load.errors
        );
    }
    drop(backends);
    Ok(())
}
