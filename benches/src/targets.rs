//! The processes under test: the upstreams, the kestra-edge gateway, nginx, HAProxy and
//! Caddy, each in a process of its own, bound to 127.0.0.1, with their CPU time, memory and
//! threads read from `/proc`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    num::NonZeroUsize,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) use kestra_edge_bench::BoxError;

/// A server process (and, for nginx, its workers); stopped when dropped.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
    /// The rest of a kestra-edge-bench child's stdout, after its `listening ADDR`.
    stdout: Option<BufReader<ChildStdout>>,
    /// The directory of a server started from a config file (nginx, HAProxy, Caddy).
    dir: Option<PathBuf>,
    stop: Stop,
}

/// How a target's process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGKILL: a single process.
    Kill,
    /// SIGTERM to the main process, which stops its children (nginx's workers outlive a
    /// SIGKILLed master).
    Term,
}

/// How every proxy is sized, so that none is favoured: the same worker threads for all, and
/// room for the most client connections a run holds at once (each with its upstream one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizing {
    pub(crate) threads: NonZeroUsize,
    pub(crate) connections: usize,
    /// The open-files limit every process started from here inherits.
    pub(crate) open_files: u64,
}

impl Target {
    /// Runs this bench binary in a serving mode (`args`) and waits for its `listening ADDR`.
    pub(crate) fn spawn_self(name: &'static str, args: &[&str]) -> Result<Self, BoxError> {
        Self::spawn_bench(name, &std::env::current_exe()?, args)
    }

    /// Starts `exe`, a kestra-edge-bench binary (this one or another build), in one of its
    /// serving modes and reads the address it prints.
    pub(crate) fn spawn_bench(
        name: &'static str,
        exe: &Path,
        args: &[&str],
    ) -> Result<Self, BoxError> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected child output {line:?}"))?
            .parse()?;
        Ok(Self {
            name,
            addr,
            child: Some(child),
            stdout: Some(stdout),
            dir: None,
            stop: Stop::Kill,
        })
    }

    /// Writes `command` to a kestra-edge-bench child's stdin, one line, and returns the line
    /// it answers on stdout.
    pub(crate) fn ask(&mut self, command: &str) -> Result<String, BoxError> {
        let stdin = self.child.as_mut().and_then(|child| child.stdin.as_mut());
        let (Some(stdin), Some(stdout)) = (stdin, self.stdout.as_mut()) else {
            return Err(format!("{} takes no commands", self.name).into());
        };
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            return Err(format!("{} exited instead of answering {command:?}", self.name).into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Starts `nginx` in front of `upstream` with `config` and waits until it accepts.
    pub(crate) fn nginx(
        nginx: &Path,
        config: &NginxConfig,
        upstream: SocketAddr,
        sizing: Sizing,
    ) -> Result<Self, BoxError> {
        let server = ConfigDir::new(config.name())?;
        for sub in ["logs", "client_body", "proxy_temp"] {
            std::fs::create_dir_all(server.dir.join(sub))?;
        }
        // Run as root, nginx's workers are `nobody`: they must be able to write request
        // bodies they buffer.
        for sub in ["client_body", "proxy_temp"] {
            std::fs::set_permissions(server.dir.join(sub), std::fs::Permissions::from_mode(0o777))?;
        }
        let conf = server.write("nginx.conf", &config.render(server.port, upstream, sizing))?;
        let mut command = Command::new(nginx);
        command.arg("-p").arg(&server.dir).arg("-c").arg(conf);
        server.start(command, Stop::Term)
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
        self.pids()
            .into_iter()
            .map(|pid| status_field(pid, "VmRSS:"))
            .sum()
    }

    /// OS threads of the process and its children.
    pub(crate) fn os_threads(&self) -> u64 {
        self.pids()
            .into_iter()
            .map(|pid| status_field(pid, "Threads:"))
            .sum()
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
        match self.stop {
            Stop::Term => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
            }
            Stop::Kill => {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        if let Some(dir) = &self.dir {
            let log = std::fs::read_to_string(dir.join(STDERR_LOG)).unwrap_or_default();
            // Caddy logs its start at `info` before its config lowers the level.
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| !line.contains("\"level\":\"info\""))
                .collect();
            for line in &lines[lines.len().saturating_sub(10)..] {
                eprintln!("{}: {line}", self.name);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where a server started from a config file writes its stderr (printed when it stops).
const STDERR_LOG: &str = "stderr.log";

/// The directory and port of a server started from a config file; removed with its
/// [`Target`].
pub(crate) struct ConfigDir {
    name: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
}

impl ConfigDir {
    /// A new directory under the temporary directory, and a free port for `name`.
    pub(crate) fn new(name: &'static str) -> Result<Self, BoxError> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "kestra-edge-bench-{}-{name}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { name, dir, port })
    }

    /// Writes `contents` to `file` in the directory; returns its path.
    pub(crate) fn write(&self, file: &str, contents: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.join(file);
        std::fs::write(&path, contents)?;
        Ok(path)
    }

    /// Spawns `command` and waits until it accepts on 127.0.0.1:`port` (10 s at most).
    pub(crate) fn start(self, mut command: Command, stop: Stop) -> Result<Target, BoxError> {
        let stderr = std::fs::File::create(self.dir.join(STDERR_LOG))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut target = Target {
            name: self.name,
            addr,
            child: Some(child),
            stdout: None,
            dir: Some(self.dir),
            stop,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            let exited = target
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!("{} exited ({status}) before listening", self.name).into());
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not start listening on {addr}", self.name).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(target)
    }
}

/// Raises this process's open-files limit (which the servers it starts inherit) to `wanted`,
/// or as far as the hard limit allows; returns the limit now in force.
///
/// An SSE stream through a proxy holds two descriptors in the proxy's process (client and
/// upstream). Raising the hard limit needs `CAP_SYS_RESOURCE`; without it, the soft limit is
/// raised up to the hard one. `unsafe_code` is forbidden here, so `prlimit(1)` sets it.
pub(crate) fn raise_open_files(wanted: u64) -> u64 {
    let (soft, hard) = open_files_limit();
    if soft >= wanted {
        return soft;
    }
    let pid = std::process::id().to_string();
    let set = |limit: u64| {
        Command::new("prlimit")
            .args([
                "--pid",
                &pid,
                &format!("--nofile={limit}:{}", limit.max(hard)),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !set(wanted) && wanted > hard {
        eprintln!(
            "open files: the hard limit is {hard} and cannot be raised here (no CAP_SYS_RESOURCE); \
             {wanted} were wanted: run `ulimit -Hn {wanted}` as a privileged user first"
        );
        let _ = set(hard);
    }
    open_files_limit().0
}

/// The soft and hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let values: Vec<u64> = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .map(|rest| {
            rest.split_whitespace()
                .map(|v| v.parse().unwrap_or(u64::MAX))
                .take(2)
                .collect()
        })
        .unwrap_or_default();
    match values[..] {
        [soft, hard] => (soft, hard),
        _ => (1024, 1024),
    }
}

/// The first line a `program` prints for `args` (on stdout or stderr), e.g. its version.
pub(crate) fn first_output_line(program: &Path, args: &[&str]) -> String {
    let Ok(out) = Command::new(program).args(args).output() else {
        return "?".to_owned();
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("?")
        .trim()
        .to_owned()
}

/// A port that was free a moment ago, for a server (nginx) that cannot report its own.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `/proc/PID/status` field given in one number (`VmRSS:` in KiB, `Threads:`); 0 when
/// the process is gone.
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
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
    /// block (`sizing.threads` worker processes, no access log).
    fn render(&self, port: u16, upstream: SocketAddr, sizing: Sizing) -> String {
        let workers = sizing.threads;
        // Any one worker may get every connection: room for all, client and upstream side.
        let worker_connections = (2 * sizing.connections + 256).max(8192);
        let rlimit_nofile = (worker_connections as u64 + 64)
            .max(16384)
            .min(sizing.open_files);
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
worker_processes {workers};
worker_rlimit_nofile {rlimit_nofile};
pid nginx.pid;
error_log logs/error.log warn;
events {{
    worker_connections {worker_connections};
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
