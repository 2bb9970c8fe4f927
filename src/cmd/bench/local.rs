//! The broker under test when it runs on this machine: a `breadboard broker` child process on
//! loopback (killed, by its own handle, when dropped), and what `/proc` says about a process's
//! CPU time, resident memory and open files.
//!
//! The one module of the CLI with unsafe code: libc calls (`prctl` in the child before `exec`,
//! `sysconf`, `getrlimit`/`setrlimit`), each with its safety argument beside it.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `breadboard broker` started by the bench. Dropping it kills it.
pub struct LocalBroker {
    /// Kept so that the process is killed (by this handle) on drop.
    _child: Child,
    /// Its process id, for `/proc`.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl LocalBroker {
    /// Starts this executable as `broker -s 127.0.0.1 -p 0 --no-mdns <extra>` and waits for its
    /// `listening on ws://ADDR` line.
    ///
    /// # Errors
    /// The process could not start or did not print its address in time.
    pub async fn start(extra: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the breadboard executable")?;
        let mut command = Command::new(exe);
        command
            // In memory: a bench keeps nothing, and benches side by side share no data directory.
            .args([
                "broker",
                "-s",
                "127.0.0.1",
                "-p",
                "0",
                "--no-mdns",
                "--in-memory",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // Should the bench itself be killed, take the broker down with it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("cannot start the broker")?;
        let pid = child.id().context("the broker exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on ws://") {
                    return Ok::<_, anyhow::Error>(addr.trim().parse::<SocketAddr>()?);
                }
            }
            anyhow::bail!("the broker exited before listening")
        })
        .await
        .context("the broker did not start in time")??;
        // Keep reading its stdout, so a later line never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            _child: child,
            pid,
            addr,
        })
    }
}

/// The number of files process `pid` has open (entries of `/proc/<pid>/fd`).
///
/// # Errors
/// The process is gone, or its `/proc` cannot be read (another user's process).
pub fn open_files(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The resident memory of process `pid`, in bytes (`VmRSS`), without its CPU time.
///
/// # Errors
/// The process is gone or `/proc` is not there.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss(&status).ok_or_else(|| invalid("status"))
}

/// CPU time (user + system) and resident memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// `utime + stime` (in ticks) from the text of a `/proc/<pid>/stat` or task `stat` file.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes from the text of a `/proc/<pid>/status` file.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {what}"))
}

/// Time on CPU, in ns, from the text of a task's `schedstat` (its first field).
pub fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().next()?.parse().ok()
}

/// CPU seconds of the live threads of process `pid` (`self` for this one) whose name starts
/// with `prefix`, to the nanosecond (`schedstat`); `None` if `/proc` does not tell. Threads that
/// ended are not counted, so read it while they run.
fn tasks_cpu(pid: &str, prefix: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut ns, mut read) = (0, 0);
    for task in tasks.flatten() {
        if !prefix.is_empty() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !name.trim_end().starts_with(prefix) {
                continue;
            }
        }
        // A thread may end between the listing and this read: it is skipped.
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok();
        if let Some(task_ns) = schedstat.as_deref().and_then(parse_schedstat_ns) {
            ns += task_ns;
            read += 1;
        }
    }
    (read > 0 || !prefix.is_empty()).then(|| ns as f64 / 1e9)
}

/// CPU time and resident memory of process `pid`. CPU time is the sum over its threads'
/// `schedstat` (nanoseconds; a whole-process `stat` counts in ticks of 10 ms, too coarse for a
/// run of a second), or `stat` where that is missing.
///
/// # Errors
/// The process is gone or `/proc` is not there.
pub fn usage(pid: u32) -> io::Result<Usage> {
    let rss_bytes = rss_bytes(pid)?;
    let cpu_s = match tasks_cpu(&pid.to_string(), "") {
        Some(cpu_s) => cpu_s,
        None => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let ticks = parse_stat_ticks(&stat).ok_or_else(|| invalid("stat"))?;
            ticks as f64 / ticks_per_second()
        }
    };
    Ok(Usage { cpu_s, rss_bytes })
}

/// CPU time of this process's threads whose name starts with `prefix` (the in-process relay's
/// runtime), in seconds. Threads that ended are not counted, so read it while they run.
pub fn threads_cpu(prefix: &str) -> f64 {
    tasks_cpu("self", prefix).unwrap_or(0.0)
}

/// Raises this process's open-file limit to `want` (or the hard limit, if lower), for `bench
/// conns`. A broker started afterwards inherits it. Returns the limit now in force.
///
/// # Errors
/// The limit could not be read or set.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = want.min(lim.rlim_max);
    if target > lim.rlim_cur {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_fields_14_and_15() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 \
                    100 12345678 900 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn schedstat_time_is_the_first_field() {
        assert_eq!(parse_schedstat_ns("123456789 2000 31\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn status_rss_is_in_kib() {
        let status = "Name:\tbreadboard\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(5120 * 1024));
        assert_eq!(parse_status_rss("Name: x\n"), None);
    }

    #[test]
    fn own_open_files_and_memory_are_readable() {
        let pid = std::process::id();
        assert!(open_files(pid).unwrap() >= 3);
        assert!(rss_bytes(pid).unwrap() > 0);
    }

    #[test]
    fn own_usage_is_readable() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        assert!(u.cpu_s >= 0.0);
    }
}
