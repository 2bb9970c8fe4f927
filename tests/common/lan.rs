//! A virtual LAN for the end-to-end tests: network namespaces for the "hosts", joined by veth
//! pairs to bridges that live in a namespace of their own. Nothing is created in the root
//! namespace, every server a test starts on it runs inside a namespace made here, and
//! everything is deleted by name when the [`Lan`] drops, even on failure.
//!
//! Building one needs root and iproute2: [`can_build_lans`] says whether this machine can (under
//! `CI=true` a "no" is a failure, not a skip).
//!
//! Processes run in a host with [`Lan::start`] (the `breadboard` binary) or [`Lan::spawn`] (any
//! program); a test talks to a host's servers from a thread of its own moved into the host's
//! namespace ([`Lan::in_host`]), so that no socket of the test ever opens in the root namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{bin, Proc};

static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);

/// Whether this machine can build namespaces; under CI a "no" is a failure.
pub fn can_build_lans(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && ip {
        return true;
    }
    let why = format!("{test}: needs root and iproute2 (root: {root}, ip: {ip})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// Runs `ip ARGS`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A virtual LAN. Bridges live in namespace `<prefix>-lan`; each host is namespace
/// `<prefix>-<host>`.
pub struct Lan {
    /// `bbt<pid>n<counter>`: unique to this test, so that tests running at once never share a
    /// namespace, and the one name everything made for this LAN starts with.
    prefix: String,
    /// The namespace holding the bridges.
    lan_ns: String,
    /// The hosts' namespaces, deleted on drop.
    hosts: Vec<String>,
    /// Each host's first address, for the servers started on it.
    addrs: HashMap<String, Ipv4Addr>,
}

impl Lan {
    /// A LAN with one bridge, `br0`.
    pub fn new() -> Lan {
        let prefix = format!(
            "bbt{}n{}",
            std::process::id(),
            NEXT_LAN.fetch_add(1, Ordering::Relaxed)
        );
        let lan_ns = format!("{prefix}-lan");
        ip(&["netns", "add", &lan_ns]);
        let lan = Lan {
            prefix,
            lan_ns,
            hosts: Vec::new(),
            addrs: HashMap::new(),
        };
        ip(&["-n", &lan.lan_ns, "link", "set", "lo", "up"]);
        lan.add_bridge("br0");
        lan
    }

    /// A LAN with one bridge and a host per `(name, n)`, its `lan0` at 10.77.0.n; `None` (the
    /// test skips) where namespaces cannot be built.
    pub fn flat(test: &str, hosts: &[(&str, u8)]) -> Option<Lan> {
        if !can_build_lans(test) {
            return None;
        }
        let mut lan = Lan::new();
        for (host, n) in hosts {
            lan.add_host(host, &[("br0", "lan0", &format!("10.77.0.{n}/24"))]);
        }
        Some(lan)
    }

    pub fn add_bridge(&self, bridge: &str) {
        ip(&[
            "-n",
            &self.lan_ns,
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &self.lan_ns, "link", "set", bridge, "up"]);
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Where `host` keeps its state (removed with the LAN).
    pub fn state_dir(&self, host: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("{}-state", self.prefix))
            .join(host)
    }

    /// Adds a host with one interface per `(bridge, interface name, address/prefix)`.
    pub fn add_host(&mut self, host: &str, links: &[(&str, &str, &str)]) {
        let ns = self.ns(host);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        if let Some(addr) = links
            .first()
            .and_then(|(_, _, cidr)| cidr.split('/').next()?.parse().ok())
        {
            self.addrs.insert(host.to_owned(), addr);
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // No IPv6 on the test hosts: no router solicitations or MLD reports, so the only
        // packets on the wire are ours.
        for scope in ["all", "default"] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{scope}.disable_ipv6=1"))
                .status();
        }
        for (bridge, ifname, cidr) in links {
            let outer = format!("{host}-{ifname}");
            ip(&[
                "-n",
                &self.lan_ns,
                "link",
                "add",
                &outer,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                &ns,
            ]);
            ip(&[
                "-n",
                &self.lan_ns,
                "link",
                "set",
                &outer,
                "master",
                bridge,
                "up",
            ]);
            ip(&["-n", &ns, "addr", "add", cidr, "dev", ifname]);
            ip(&["-n", &ns, "link", "set", ifname, "up"]);
        }
    }

    /// Starts `breadboard <args>` in `host`.
    pub fn start(&self, host: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), bin()])
            .args(args)
            .env_remove("BREADBOARD_NO_MDNS")
            // Hosts share this machine's file system: each keeps its state apart, as a host
            // of its own would (brokers take their default data directory from here).
            .env("XDG_STATE_HOME", self.state_dir(host));
        Proc::spawn(cmd)
    }

    /// Runs `breadboard <args>` in `host` to completion (bounded); returns stdout.
    pub fn run(&self, host: &str, args: &[&str], limit: Duration) -> String {
        let mut proc = self.start(host, args);
        let status = proc
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("breadboard {} did not finish in {limit:?}", args.join(" ")));
        let mut out = String::new();
        while let Some(line) = proc.line(Duration::from_millis(100)) {
            out.push_str(&line);
            out.push('\n');
        }
        assert!(
            status.success(),
            "breadboard {} failed: {status}\n{out}",
            args.join(" ")
        );
        out
    }

    /// Packets sent by `host` on `ifname` so far.
    pub fn tx_packets(&self, host: &str, ifname: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "cat"])
            .arg(format!("/sys/class/net/{ifname}/statistics/tx_packets"))
            .output()
            .expect("read interface statistics");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a packet count")
    }

    /// The first address of `host` (its `lan0` on a [`Lan::flat`] LAN).
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        *self
            .addrs
            .get(host)
            .unwrap_or_else(|| panic!("no host {host:?} on this LAN"))
    }

    /// Starts `program <args>` in `host`, stdout piped as [`Proc::spawn`] does.
    pub fn spawn(&self, host: &str, program: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host), program])
            .args(args);
        Proc::spawn(cmd)
    }

    /// Runs `f` on a thread of its own moved into `host`'s network namespace, and returns what
    /// it returns: sockets it opens belong to that namespace (and stay there when they are
    /// handed back), so the test talks to the host's servers without a route from the root
    /// namespace. Panics, before `f` runs, if the thread cannot enter the namespace.
    pub fn in_host<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/var/run/netns").join(self.ns(host));
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("enter {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", self.prefix)));
        for ns in self.hosts.iter().chain(std::iter::once(&self.lan_ns)) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
