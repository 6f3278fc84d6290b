//! The processes under test: the upstreams, the kestra-edge gateway and nginx, each in a
//! process of its own, bound to 127.0.0.1, with their CPU time and memory read from `/proc`.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server process (and, for nginx, its workers); stopped when dropped.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
    nginx_dir: Option<PathBuf>,
}

impl Target {
    /// Runs this bench binary in a serving mode (`args`) and waits for its `listening ADDR`.
    pub(crate) fn spawn_self(name: &'static str, args: &[&str]) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected child output {line:?}"))?
            .parse()?;
        Ok(Self {
            name,
            addr,
            child: Some(child),
            nginx_dir: None,
        })
    }

    /// Starts `nginx` in front of `upstream` with `config` and waits until it accepts.
    pub(crate) fn nginx(
        nginx: &Path,
        config: &NginxConfig,
        upstream: SocketAddr,
    ) -> Result<Self, BoxError> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "kestra-edge-bench-{}-{}-{port}",
            std::process::id(),
            config.name()
        ));
        for sub in ["logs", "client_body", "proxy_temp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Run as root, nginx's workers are `nobody`: they must be able to write request
        // bodies they buffer.
        for sub in ["client_body", "proxy_temp"] {
            std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o777))?;
        }
        std::fs::write(dir.join("nginx.conf"), config.render(port, upstream))?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let target = Self {
            name: config.name(),
            addr,
            child: Some(child),
            nginx_dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not start listening on {addr}", config.name()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(target)
    }

    /// The process and its children (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let pid = child.id();
        let mut pids = vec![pid];
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        pids
    }

    /// Resident memory of the process and its children, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids().into_iter().map(rss_kib).sum()
    }

    /// CPU time (user + system) used so far by the process and its children.
    pub(crate) fn cpu_time(&self) -> Duration {
        self.pids().into_iter().map(cpu_time).sum()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.nginx_dir.is_some() {
            // nginx's workers outlive a SIGKILLed master: ask the master for a fast shutdown.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
        if let Some(dir) = &self.nginx_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A port that was free a moment ago, for a server (nginx) that cannot report its own.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `VmRSS` of one process, in KiB (0 when it is gone).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of one process (`proc(5)`, fields 14 and 15, in clock ticks of 1/100 s).
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields that follow start after its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The nginx set-ups compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NginxConfig {
    /// The block from Kestra's documentation, line for line: a new upstream connection per
    /// request, `Connection: upgrade` always, nginx's default 1 MiB body limit.
    Seed,
    /// The same with an `upstream` block holding idle keep-alive connections,
    /// `Connection` sent only for upgrades, and Kestra's 10 GiB body limit.
    Keepalive,
    /// `Keepalive` behind TLS and HTTP/2.
    Tls(NginxTls),
}

/// The TLS settings of [`NginxConfig::Tls`]: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`,
/// `ssl_session_cache` left at nginx's default (`none`: no server-side session cache;
/// `ssl_session_tickets` stays on, as nginx's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NginxTls {
    cert: PathBuf,
    key: PathBuf,
    /// nginx ≥ 1.25.1 takes `http2 on;`; older ones (Debian 12's 1.22) `listen … http2`.
    http2_directive: bool,
}

impl NginxTls {
    /// Serves `cert` and `key`, in the HTTP/2 syntax that the `nginx` binary understands.
    pub(crate) fn new(nginx: &Path, cert: &Path, key: &Path) -> Result<Self, BoxError> {
        // `nginx -v` prints `nginx version: nginx/1.22.1` on stderr.
        let out = Command::new(nginx).arg("-v").output()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let version: Vec<u32> = text
            .split_once("nginx/")
            .map(|(_, v)| v.split_whitespace().next().unwrap_or_default())
            .unwrap_or_default()
            .split('.')
            .filter_map(|n| n.parse().ok())
            .collect();
        if version.len() < 2 {
            return Err(format!("cannot read the nginx version from {text:?}").into());
        }
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            http2_directive: version.as_slice() >= [1, 25, 1].as_slice(),
        })
    }

    /// The `listen` line and the TLS directives of the `server` block.
    fn server_lines(&self, port: u16) -> String {
        let (listen_http2, http2_on) = if self.http2_directive {
            ("", "        http2 on;\n")
        } else {
            (" http2", "")
        };
        format!(
            "        listen 127.0.0.1:{port} ssl{listen_http2};
{http2_on}        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # ssl_session_cache: nginx's default (none); the bench's clients never resume.
        # No re-handshake every 1000 requests (nginx's default), and h2load does not reconnect.
        keepalive_requests 1000000;
",
            cert = self.cert.display(),
            key = self.key.display(),
        )
    }
}

impl NginxConfig {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Seed => "nginx",
            Self::Keepalive => "nginx-keepalive",
            Self::Tls(_) => "nginx-tls",
        }
    }

    /// The whole `nginx.conf`: the seed's `location /kestra` block inside a minimal `http`
    /// block (two workers like the machine's two cores, no access log).
    fn render(&self, port: u16, upstream: SocketAddr) -> String {
        let listen = match self {
            Self::Tls(tls) => tls.server_lines(port),
            Self::Seed | Self::Keepalive => format!("        listen 127.0.0.1:{port};\n"),
        };
        let (upstream_block, pass, connection, extra) = match self {
            Self::Seed => (String::new(), upstream.to_string(), "\"upgrade\"", ""),
            Self::Keepalive | Self::Tls(_) => (
                format!(
                    "    upstream kestra {{\n        server {upstream};\n        keepalive 256;\n    }}\n    map $http_upgrade $connection_upgrade {{\n        default upgrade;\n        '' '';\n    }}\n"
                ),
                "kestra".to_owned(),
                "$connection_upgrade",
                "            client_max_body_size 10g;\n",
            ),
        };
        format!(
            "daemon off;
master_process on;
worker_processes auto;
worker_rlimit_nofile 16384;
pid nginx.pid;
error_log logs/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy_temp;
{upstream_block}    server {{
{listen}        server_name localhost;
        location /kestra {{
            proxy_pass http://{pass}/kestra;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection {connection};
            proxy_read_timeout 600s;
            proxy_redirect off;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Protocol $scheme;
            # Needed for SSE
            proxy_buffering off;
            proxy_cache off;
{extra}        }}
    }}
}}
"
        )
    }
}

/// `nginx` on the PATH (or Debian's `/usr/sbin`), if any.
pub(crate) fn find_nginx() -> Option<PathBuf> {
    find_program("nginx")
}

/// `name` on the PATH (or in `/usr/sbin`, `/usr/local/sbin`), if any.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
