//! HTTP/2 load from `h2load` (nghttp2): several streams on each connection, over TLS with
//! ALPN `h2` for an `https` URL, HTTP/2 with prior knowledge (h2c) for an `http` one.
//!
//! Throughput and errors come from h2load's summary; latency from its per-request log
//! (`--log-file`), since the summary gives no percentiles; h2load's own CPU time from `/proc`.

use crate::{
    load::{new_histogram, Load},
    targets::{self, BoxError},
};
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long h2load may run past `--duration` (connect, drain) before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// One h2load measurement.
#[derive(Debug)]
pub(crate) struct H2Run {
    pub(crate) load: Load,
    /// h2load's CPU use, in cores.
    pub(crate) generator_cores: f64,
}

/// Runs `h2load` against `url` with `connections` × `streams` for `duration` (one thread).
pub(crate) fn run(
    h2load: &Path,
    url: &str,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<H2Run, BoxError> {
    let log = std::env::temp_dir().join(format!(
        "kestra-edge-bench-h2load-{}.log",
        std::process::id()
    ));
    let started = Instant::now();
    let mut child = Command::new(h2load)
        .args(["-t", "1", "-c", &connections.to_string()])
        .args(["-m", &streams.to_string()])
        .args(["-D", &format!("{}ms", duration.as_millis().max(1))])
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = started + duration + GRACE;
    let mut cpu = Duration::ZERO;
    loop {
        // Read before reaping: an exited, unreaped child still shows its final CPU times.
        cpu = cpu.max(targets::cpu_time(pid));
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&log);
            return Err(format!("h2load did not finish within {:?}", duration + GRACE).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let summary =
        Summary::parse(&stdout).ok_or_else(|| format!("unexpected h2load output:\n{stdout}"))?;
    let mut latency = new_histogram();
    for line in log_text.lines() {
        let mut fields = line.split('\t');
        let (Some(_start), Some(status), Some(micros)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if status.starts_with('2') {
            if let Ok(micros) = micros.trim().parse::<u64>() {
                let _ = latency.record(micros.max(1));
            }
        }
    }
    Ok(H2Run {
        load: Load {
            requests: summary.succeeded,
            errors: summary.errors,
            bytes: summary.data_bytes,
            elapsed: summary.elapsed,
            latency,
        },
        generator_cores: cpu.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON),
    })
}

/// The lines of h2load's summary the report needs.
#[derive(Debug, PartialEq)]
struct Summary {
    elapsed: Duration,
    succeeded: u64,
    errors: u64,
    data_bytes: u64,
}

impl Summary {
    /// Parses `finished in 4.00s, …`, `requests: … N succeeded, N failed, N errored,
    /// N timeout` and `traffic: … (N) data`.
    fn parse(stdout: &str) -> Option<Self> {
        let finished = stdout
            .lines()
            .find_map(|l| l.strip_prefix("finished in "))?;
        let elapsed = parse_duration(finished.split(',').next()?.trim())?;
        let requests = stdout.lines().find_map(|l| l.strip_prefix("requests: "))?;
        let count = |what: &str| -> Option<u64> {
            requests
                .split(',')
                .map(str::trim)
                .find_map(|part| part.strip_suffix(what))
                .and_then(|n| n.trim().parse().ok())
        };
        let succeeded = count("succeeded")?;
        let errors = count("failed")? + count("errored")? + count("timeout")?;
        // `traffic: 1.09MB (1143234) total, 31.23KB (31980) headers (…), 208.01KB (213000) data`
        let data_bytes = stdout
            .lines()
            .find_map(|l| l.strip_prefix("traffic: "))
            .and_then(|t| t.rsplit(',').next())
            .and_then(|part| part.split_once('(')?.1.split_once(')'))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or(0);
        Some(Self {
            elapsed,
            succeeded,
            errors,
            data_bytes,
        })
    }
}

/// `4.00s`, `512.3ms`, `900us`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    let seconds = number.parse::<f64>().ok()? * scale;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_parsed() {
        let out = "\
finished in 4.00s, 26655.75 req/s, 1.09MB/s
requests: 106623 total, 106751 started, 106623 done, 106620 succeeded, 3 failed, 0 errored, 1 timeout
status codes: 106620 2xx, 0 3xx, 3 4xx, 0 5xx
traffic: 1.09MB (1143234) total, 31.23KB (31980) headers (space savings 95.00%), 208.01KB (213000) data
";
        assert_eq!(
            Summary::parse(out),
            Some(Summary {
                elapsed: Duration::from_secs(4),
                succeeded: 106_620,
                errors: 4,
                data_bytes: 213_000,
            })
        );
        assert_eq!(parse_duration("512ms"), Some(Duration::from_millis(512)));
        assert_eq!(Summary::parse("h2load: connection refused"), None);
    }
}
