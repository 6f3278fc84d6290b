//! The balance group (`--only balance`): small GETs through three upstream replicas, by
//! kestra-edge (power of two choices over peak-EWMA load) and by nginx (an `upstream` block
//! with the same three servers and keep-alive, round robin), and the same through one
//! upstream in the same run, so that balancing's own cost shows.

use crate::{
    load,
    report::{HttpRow, Report},
    targets::{BoxError, ConfigDir, NginxConfig, Stop, Target},
    Cli, CpuMeter, Proxies,
};
use std::{net::SocketAddr, os::unix::fs::PermissionsExt, process::Command};

/// The balanced targets' names in the rows: the plain names (`kestra-edge`,
/// `nginx-keepalive`) are the three-replica set-ups, so that the table's `vs
/// nginx-keepalive` column compares like with like.
const EDGE_ONE: &str = "kestra-edge (1 upstream)";
const NGINX_ONE: &str = "nginx-keepalive (1 upstream)";

const WORKLOADS: [load::Workload; 2] = [
    load::Workload {
        name: "small GET, 3 replicas",
        path: "/kestra/api/v1/small",
        connections: 32,
        kind: load::Kind::KeepAlive,
    },
    load::Workload {
        name: "small GET, 3 replicas",
        path: "/kestra/api/v1/small",
        connections: 256,
        kind: load::Kind::KeepAlive,
    },
];

pub(crate) fn run(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    report: &mut Report,
) -> Result<(), BoxError> {
    let replicas = (0..3)
        .map(|_| Target::spawn_self("direct", &["serve-upstream"]))
        .collect::<Result<Vec<_>, _>>()?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let more: Vec<String> = addrs[1..].iter().map(|a| format!("http://{a}")).collect();
    let mut edge_one = proxies.gateway(addrs[0], &[])?;
    edge_one.name = EDGE_ONE;
    let edge_three =
        proxies.gateway(addrs[0], &["--upstream", &more[0], "--upstream", &more[1]])?;
    let mut targets = vec![edge_three, edge_one];
    if let Some(nginx) = &proxies.nginx {
        targets.push(nginx_three(nginx, &addrs, proxies)?);
        let mut one = Target::nginx(nginx, &NginxConfig::Keepalive, addrs[0], proxies.sizing)?;
        one.name = NGINX_ONE;
        targets.push(one);
    }
    let mut replicas = replicas.into_iter();
    // Direct access to one replica is the reference.
    let direct = replicas.next().ok_or("no replica")?;
    for workload in WORKLOADS {
        let mut rps = Vec::new();
        for target in std::iter::once(&direct).chain(&targets) {
            let _ = runtime.block_on(load::run(target.addr, workload, cli.warmup, None));
            let cpu = CpuMeter::start(target);
            let load = runtime.block_on(load::run(target.addr, workload, cli.duration, None));
            let (proxy_cpu, generator_cpu) = cpu.stop(target, load.elapsed);
            report.saw_threads(target.name, target.os_threads());
            let row = HttpRow::new(workload, target.name, &load, proxy_cpu, generator_cpu);
            eprintln!("{}", row.summary());
            rps.push((
                target.name,
                load.requests as f64 / load.elapsed.as_secs_f64(),
            ));
            report.http.push(row);
        }
        let of = |name: &str| rps.iter().find(|(n, _)| *n == name).map(|(_, r)| *r);
        if let (Some(three), Some(one)) = (of("kestra-edge"), of(EDGE_ONE)) {
            eprintln!(
                "balance c={}: kestra-edge 3 replicas / 1 upstream = {:.3} (balancing cost {:.1}%)",
                workload.connections,
                three / one,
                (1.0 - three / one) * 100.0
            );
        }
        if let (Some(edge), Some(nginx)) = (of("kestra-edge"), of("nginx-keepalive")) {
            eprintln!(
                "balance c={}: kestra-edge / nginx-keepalive, 3 replicas each = {:.2}×",
                workload.connections,
                edge / nginx
            );
        }
    }
    drop(replicas);
    Ok(())
}

/// nginx with the seed's `location /kestra` block and an `upstream` block holding the three
/// replicas with idle keep-alive connections (round robin, nginx's default).
fn nginx_three(
    nginx: &std::path::Path,
    replicas: &[SocketAddr],
    proxies: &Proxies,
) -> Result<Target, BoxError> {
    let server = ConfigDir::new("nginx-keepalive")?;
    for sub in ["logs", "client_body", "proxy_temp"] {
        std::fs::create_dir_all(server.dir.join(sub))?;
    }
    // Run as root, nginx's workers are `nobody` and write request bodies they buffer.
    for sub in ["client_body", "proxy_temp"] {
        std::fs::set_permissions(server.dir.join(sub), std::fs::Permissions::from_mode(0o777))?;
    }
    let sizing = proxies.sizing;
    let workers = sizing.threads;
    let worker_connections = (2 * sizing.connections + 256).max(8192);
    let rlimit_nofile = (worker_connections as u64 + 64)
        .max(16384)
        .min(sizing.open_files);
    let servers: String = replicas
        .iter()
        .map(|r| format!("        server {r};\n"))
        .collect();
    let port = server.port;
    let conf = format!(
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
    upstream kestra {{
{servers}        keepalive 256;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location /kestra {{
            proxy_pass http://kestra/kestra;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 600s;
            proxy_redirect off;
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Protocol $scheme;
            proxy_buffering off;
            proxy_cache off;
            client_max_body_size 10g;
        }}
    }}
}}
"
    );
    let conf = server.write("nginx.conf", &conf)?;
    let mut command = Command::new(nginx);
    command.arg("-p").arg(&server.dir).arg("-c").arg(conf);
    server.start(command, Stop::Term)
}
