//! One `nats-server` on 127.0.0.1 (a port it picks, JetStream on, a temporary store), and
//! brokers clustered through it: enough for brokers of one cluster on one machine, without the
//! virtual LAN of [`super::nats`]. Killed (by its own handle) when dropped.
//!
//! `nats-server` comes from Debian (`scripts/test` installs it); without it
//! [`LoopbackNats::start`] skips, except under `CI=true`, where that is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::{Broker, WAIT};

/// A `nats-server` on a loopback port, stopped on drop.
pub struct LoopbackNats {
    child: Child,
    /// Its client port.
    pub port: u16,
    /// Its JetStream store, removed on drop.
    _store: tempfile::TempDir,
}

impl LoopbackNats {
    /// Starts one, or returns `None` (after a visible `SKIPPED` line) if there is no
    /// `nats-server`; under `CI=true` that panics instead.
    pub fn start(test: &str) -> Option<LoopbackNats> {
        let store = tempfile::tempdir().expect("a JetStream directory");
        // `-p -1`: the server picks a free port and says which.
        let spawned = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let why = format!("{test}: needs nats-server ({e}; scripts/test installs it)");
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true"),
                    "{why}; CI=true, so this is a failure, not a skip"
                );
                eprintln!("SKIPPED {why}");
                return None;
            }
        };
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("client connections on ") {
                    let port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let Some(port) = rx.recv_timeout(WAIT).ok().flatten() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not say where it listens within {WAIT:?}");
        };
        Some(LoopbackNats {
            child,
            port,
            _store: store,
        })
    }

    /// `nats://127.0.0.1:PORT`: what a broker's `--cluster` and the bench's `--nats` take.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A broker (on 127.0.0.1, a free port, no mDNS, in memory) joined to the cluster through
    /// this server.
    pub fn broker(&self, name: &str) -> Broker {
        let url = self.url();
        Broker::start(&["--name", name, "--cluster", &url])
    }
}

impl Drop for LoopbackNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
