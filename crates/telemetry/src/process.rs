//! The standard `process_*` metrics, read from `/proc/self` when scraped (Linux; elsewhere
//! nothing is written).

use std::fmt::Write as _;

/// Clock ticks per second of `/proc/self/stat`'s times: `USER_HZ`, 100 on every Linux
/// architecture (proc(5)); reading `sysconf(_SC_CLK_TCK)` would need `unsafe`.
const CLOCK_TICKS: f64 = 100.0;

/// Appends the process metrics that can be read to `text`.
pub(crate) fn render(text: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // After the command name, which may hold spaces, in parentheses (proc(5)).
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields are numbered from 1 (pid); `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        write(
            text,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (utime + stime) / CLOCK_TICKS,
        );
    }
    if let Some(vsize) = field(23) {
        write(
            text,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    if let Some(rss) = status_kib("VmRSS:") {
        write(
            text,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss * 1024.0,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        write(
            text,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(max) = max_fds() {
        write(
            text,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        write(
            text,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + start / CLOCK_TICKS,
        );
    }
}

fn write(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
    );
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` of `/proc/stat`: boot time in seconds since the epoch.
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_process_metrics_are_read() {
        let mut text = String::new();
        super::render(&mut text);
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(text.contains(&format!("\n{name}")), "{name} in\n{text}");
            }
        }
    }
}
