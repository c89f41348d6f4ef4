//! What the benchmark reads of the machine and its processes, and the
//! small commands it runs around the steps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process;

/// Long enough for any step of the benchmark on a loaded machine.
pub const LONG: Duration = Duration::from_secs(1800);

/// `sync; echo 3 > /proc/sys/vm/drop_caches`: every step starts cold.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
}

/// `sh -c SCRIPT sh ARGS...` to completion; its stdout.
pub fn sh(script: &str, args: &[&str]) -> Result<String> {
    process::run(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(args),
        LONG,
    )
}

/// A command to completion; its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    process::run(Command::new(program).args(args), LONG)
}

/// `du -sxB1 PATHS...` summed: bytes allocated under the paths (0 for none
/// that exist).
pub fn du_bytes(paths: &[&Path]) -> u64 {
    let mut cmd = Command::new("du");
    cmd.arg("-sxB1").args(paths.iter().filter(|p| p.exists()));
    if paths.iter().all(|p| !p.exists()) {
        return 0;
    }
    match process::run_unchecked(&mut cmd, LONG) {
        Ok(out) => out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum(),
        Err(_) => 0,
    }
}

/// A `Key:  N kB` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The peak RSS (VmHWM) of a process in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// User and system clock ticks a process used so far (/proc/PID/stat
/// fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: the fields after it start at ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields.as_slice() {
        [u, s] => (*u, *s),
        _ => (0, 0),
    }
}

/// "daemon CPU: user X s, sys Y s" since `start` (from [`cpu_ticks`]).
pub fn cpu_since(pid: u32, start: (u64, u64)) -> String {
    let (u, s) = cpu_ticks(pid);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    format!(
        "daemon CPU: user {:.1} s, sys {:.1} s",
        u.saturating_sub(start.0) as f64 / hz,
        s.saturating_sub(start.1) as f64 / hz
    )
}

/// Bytes a process read from storage so far (/proc/PID/io `read_bytes`).
pub fn read_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// How many lines of a log file contain `needle` (`grep -c`).
pub fn count_lines(log: &Path, needle: &str) -> usize {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Lines of a log file that contain every needle.
pub fn count_lines_all(log: &Path, needles: &[&str]) -> usize {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// One HTTP/1.0 request to `addr` (`host:port`); status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let Some(status) = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()) else {
        bail!("no HTTP status line from {addr}{path}");
    };
    Ok((status, body.to_string()))
}

/// The manifest types the mirror is asked for (as containerd asks).
pub const MANIFEST_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Whether the mirror at `addr` serves the manifest at `path` (HEAD, 200).
pub fn serves(addr: &str, path: &str) -> bool {
    http(addr, "HEAD", path, &[("Accept", MANIFEST_ACCEPT)]).is_ok_and(|(s, _)| s == 200)
}

/// A metric of the daemon summed over its labels (None when the daemon
/// does not answer or has no such metric).
pub fn metric(listen: &str, name: &str) -> Option<u64> {
    let (status, body) = http(listen, "GET", "/metrics", &[]).ok()?;
    (status == 200).then_some(())?;
    sum_metric(&body, name)
}

/// The sum of the samples of `name` in a Prometheus text exposition.
pub fn sum_metric(text: &str, name: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if first == name || first.starts_with(&format!("{name}{{")) {
            if let Some(v) = line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
            {
                sum += v;
                found = true;
            }
        }
    }
    found.then_some(sum as u64)
}

/// The 1, 5 and 15 min load averages.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `date -u '+%Y-%m-%d %H:%M UTC'`.
pub fn date() -> String {
    run("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .map(|d| d.trim().to_string())
        .unwrap_or_default()
}

/// One line about the machine, as the reports open with.
pub fn machine_line(containerd_version: &str) -> String {
    let nproc = run("nproc", &[]).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(": ")
                .map(|(_, m)| m.to_string())
        })
        .unwrap_or_default();
    let mem = run("free", &["-g"])
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs = run("findmnt", &["-no", "FSTYPE", "-T", "/tmp"]).unwrap_or_default();
    format!(
        "{} cores ({model}), {mem} GiB RAM, {}, {} on /tmp, containerd {containerd_version}",
        nproc.trim(),
        kernel.trim(),
        fs.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP airgap_layers_prepared_total x\n\
                    airgap_layers_prepared_total{kind=\"a\"} 2\n\
                    airgap_layers_prepared_total{kind=\"b\"} 3\n\
                    airgap_layers_prepared_total_other 7\n\
                    airgap_layer_prepare_pending 0\n";
        assert_eq!(sum_metric(text, "airgap_layers_prepared_total"), Some(5));
        assert_eq!(sum_metric(text, "airgap_layer_prepare_pending"), Some(0));
        assert_eq!(sum_metric(text, "airgap_layers_mounted_total"), None);
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        let (u, s) = cpu_ticks(std::process::id());
        // Reading the fields at all is the point; a running test used some CPU.
        assert!(u + s < u64::MAX);
        assert!(status_kib(std::process::id(), "VmHWM").is_some());
    }
}
