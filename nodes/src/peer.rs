//! Peer mode: with no broker on the LAN, the nodes elect one of themselves to host it.
//!
//! Every node already carries the whole broker; [`follow_or_host`] decides when one runs it.
//!
//! ```text
//!            a broker is there                      no broker for --peer-after
//!   ┌──────────────────────────────┐  ┌──────────────────────────────────────────────┐
//!   ▼                              │  │                                              ▼
//! following ◄──── a broker appears ─┴──┴─ standing: a _bbpeer record {prio, tb}, for SETTLE
//!   ▲                                                  │ the best rank seen is this node's
//!   │ a better broker appears (dedicated, or           ▼
//!   │ a better-ranked peer): stop advertising,      hosting: broker::Broker on 0.0.0.0:<any>,
//!   └── stop the broker once its clients have left ◄─ advertised _breadboard role=peer
//! ```
//!
//! - **Standing** takes [`SETTLE`]: every candidate's record reaches every other, and each
//!   ranks them the same way ([`Rank`]: `--peer-priority`, then a random tie-breaker), so
//!   they agree on the winner with no coordinator. The others withdraw as soon as the
//!   winner's broker appears; if it never does (the winner left meanwhile), they stand again.
//! - **Which broker a node uses** is [`discovery::pick`]'s rule: a dedicated broker
//!   (`breadboard broker`, `role=broker`) before any peer, and among peers the best-ranked. So
//!   two peer brokers that meet (a partition healing, two nodes deciding at once) resolve to
//!   one, and a dedicated broker takes everyone over; the host that is no longer chosen
//!   withdraws its record at once and stops its broker when its last client has moved (or
//!   after [`YIELD_GRACE`]).
//! - **The host leaving** (even SIGKILL): the others' WebSockets drop, the runtime asks mDNS
//!   whether the broker is still there, its record goes, and after `--peer-after` they stand
//!   again.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use discovery::{
    Advert, BrokerChoice, BrokerSecurity, Browser, Discovery, Rank, Seen, Wanted, BROKER_TYPE,
    PEER_TYPE,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a node waits for a broker before standing, unless told (`--peer-after`).
pub const DEFAULT_PEER_AFTER: Duration = Duration::from_secs(2);
/// The priority a node stands with, unless told (`--peer-priority`).
pub const DEFAULT_PRIORITY: u8 = 100;
/// How long candidates listen to one another before the best one hosts.
pub const SETTLE: Duration = Duration::from_millis(1500);
/// How long a losing candidate waits for the winner's broker before standing again.
const WINNER_WAIT: Duration = Duration::from_secs(4);
/// The longest a host that was not chosen any more keeps its broker for clients still on it.
pub const YIELD_GRACE: Duration = Duration::from_secs(10);

/// How a node takes part in peer mode.
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// How long without any broker before standing.
    pub after: Duration,
    /// Higher stands better (`--peer-priority`).
    pub priority: u8,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            after: DEFAULT_PEER_AFTER,
            priority: DEFAULT_PRIORITY,
        }
    }
}

/// Follows the brokers on the LAN as [`discovery::follow_brokers`] does and, when there is
/// none for `options.after`, stands in an election and hosts the broker if it wins. The
/// watch is the broker to use (this node's own, when it hosts); the task ends on `shutdown`
/// (its records are withdrawn by `Discovery::shutdown`).
///
/// # Errors
/// When browsing cannot start.
pub fn follow_or_host(
    mdns: Arc<Discovery>,
    node: &str,
    wanted: Wanted,
    options: PeerOptions,
    shutdown: CancellationToken,
) -> discovery::Result<(watch::Receiver<Option<BrokerChoice>>, JoinHandle<()>)> {
    let choice = discovery::follow_brokers(&mdns, wanted, shutdown.clone())?;
    let candidates = mdns.browse(PEER_TYPE)?;
    let peer = Peer {
        mdns,
        node: node.to_string(),
        rank: Rank {
            priority: options.priority,
            tiebreak: rand::random(),
        },
        after: options.after,
        choice: choice.clone(),
        candidates,
        standing: HashMap::new(),
        shutdown,
    };
    Ok((choice, tokio::spawn(peer.run())))
}

struct Peer {
    mdns: Arc<Discovery>,
    node: String,
    rank: Rank,
    after: Duration,
    choice: watch::Receiver<Option<BrokerChoice>>,
    candidates: Browser,
    /// Every candidate's record seen and still there: full name → rank.
    standing: HashMap<String, Rank>,
    shutdown: CancellationToken,
}

/// How a step ended.
enum Step {
    /// Shutdown: the task ends.
    Stop,
    /// On to the next round: wait for no broker, stand again.
    Again,
}

impl Peer {
    async fn run(mut self) {
        loop {
            if let Step::Stop = self.wait_without_broker().await {
                return;
            }
            if let Step::Stop = self.stand().await {
                return;
            }
        }
    }

    /// Returns once no broker has been seen for `after` (or `Stop` on shutdown). Candidate
    /// records are kept up to date meanwhile.
    async fn wait_without_broker(&mut self) -> Step {
        loop {
            while self.choice.borrow_and_update().is_some() {
                tokio::select! {
                    () = self.shutdown.cancelled() => return Step::Stop,
                    changed = self.choice.changed() => if changed.is_err() { return Step::Stop },
                    seen = self.candidates.next() => self.saw(seen),
                }
            }
            let quiet = tokio::time::sleep(self.after);
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return Step::Stop,
                    () = &mut quiet => return Step::Again,
                    changed = self.choice.changed() => {
                        if changed.is_err() {
                            return Step::Stop;
                        }
                        if self.choice.borrow_and_update().is_some() {
                            break;
                        }
                    }
                    seen = self.candidates.next() => self.saw(seen),
                }
            }
        }
    }

    fn saw(&mut self, seen: Option<Seen>) {
        match seen {
            Some(Seen::Up(service)) => {
                if let Some(rank) = Rank::of(&service) {
                    self.standing.insert(service.fullname, rank);
                }
            }
            Some(Seen::Down { fullname, .. }) => {
                self.standing.remove(&fullname);
            }
            None => {}
        }
    }

    /// Stands for [`SETTLE`], then hosts if this node ranks best; else waits for the winner's
    /// broker.
    async fn stand(&mut self) -> Step {
        let advert = Advert {
            service_type: PEER_TYPE,
            name: self.node.clone(),
            port: 0,
            txt: discovery::candidate_txt(&self.node, self.rank),
        };
        let mine = match self.mdns.advertise(&advert) {
            Ok(fullname) => fullname,
            Err(e) => {
                tracing::warn!(error = %e, "peer mode: cannot stand; waiting for a broker");
                return self.idle(WINNER_WAIT).await;
            }
        };
        tracing::info!(rank = ?self.rank, "no broker on the LAN: standing to host one");
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        let step = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break Some(Step::Stop),
                () = &mut settle => break None,
                changed = self.choice.changed() => {
                    if changed.is_err() {
                        break Some(Step::Stop);
                    }
                    if self.choice.borrow_and_update().is_some() {
                        tracing::info!("a broker appeared: not standing any more");
                        break Some(Step::Again);
                    }
                }
                seen = self.candidates.next() => self.saw(seen),
            }
        };
        if let Some(step) = step {
            self.mdns.withdraw(&mine).await;
            return step;
        }
        let best = self
            .standing
            .iter()
            .filter(|(fullname, _)| **fullname != mine)
            .map(|(_, rank)| *rank)
            .max();
        if best.is_some_and(|best| best > self.rank) {
            tracing::info!(winner = ?best, "peer mode: another node hosts");
            let step = self.wait_for_winner().await;
            self.mdns.withdraw(&mine).await;
            return step;
        }
        self.mdns.withdraw(&mine).await;
        self.host().await
    }

    /// Waits up to [`WINNER_WAIT`] for a broker to appear.
    async fn wait_for_winner(&mut self) -> Step {
        let deadline = tokio::time::sleep(WINNER_WAIT);
        tokio::pin!(deadline);
        loop {
            if self.choice.borrow_and_update().is_some() {
                return Step::Again;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Step::Stop,
                () = &mut deadline => {
                    tracing::info!("peer mode: the winner's broker never appeared; standing again");
                    return Step::Again;
                }
                changed = self.choice.changed() => if changed.is_err() { return Step::Stop },
                seen = self.candidates.next() => self.saw(seen),
            }
        }
    }

    /// Sleeps `wait`, keeping candidate records up to date.
    async fn idle(&mut self, wait: Duration) -> Step {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Step::Stop,
                () = &mut sleep => return Step::Again,
                seen = self.candidates.next() => self.saw(seen),
            }
        }
    }

    /// Runs the embedded broker and advertises it until another broker is chosen over it (then
    /// until its clients have left) or shutdown.
    async fn host(&mut self) -> Step {
        let config = broker::Config {
            name: self.node.clone(),
            hosted_by: Some(self.node.clone()),
            ..broker::Config::default()
        };
        let hosted = match start_broker(config).await {
            Ok(hosted) => hosted,
            Err(e) => {
                tracing::error!(error = %e, "peer mode: cannot start the broker");
                return self.idle(WINNER_WAIT).await;
            }
        };
        let advert = Advert {
            service_type: BROKER_TYPE,
            name: self.node.clone(),
            port: hosted.port,
            txt: discovery::peer_broker_txt(
                &self.node,
                &BrokerSecurity::default(),
                &self.node,
                self.rank,
            ),
        };
        let mine = match self.mdns.advertise(&advert) {
            Ok(fullname) => fullname,
            Err(e) => {
                tracing::error!(error = %e, "peer mode: cannot advertise the broker");
                hosted.stop.cancel();
                return self.idle(WINNER_WAIT).await;
            }
        };
        tracing::info!(port = hosted.port, "peer mode: this node hosts the broker");
        let mut hosted = hosted;
        let mut ended = false;
        let chosen_elsewhere = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break false,
                _ = &mut hosted.served => {
                    ended = true;
                    break false;
                }
                changed = self.choice.changed() => {
                    if changed.is_err() {
                        break false;
                    }
                    let now = self.choice.borrow_and_update().clone();
                    if now.is_some_and(|c| c.fullname != mine) {
                        break true;
                    }
                }
                seen = self.candidates.next() => self.saw(seen),
            }
        };
        self.mdns.withdraw(&mine).await;
        if chosen_elsewhere {
            tracing::info!("peer mode: another broker is chosen; stopping once its clients left");
            let left = async {
                while hosted.metrics.connections.load(Relaxed) > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => {}
                _ = tokio::time::timeout(YIELD_GRACE, left) => {}
            }
        }
        hosted.stop.cancel();
        if !ended {
            let _ = hosted.served.await;
        }
        tracing::info!("peer mode: the broker this node hosted stopped");
        if self.shutdown.is_cancelled() {
            Step::Stop
        } else {
            Step::Again
        }
    }
}

/// A broker this node runs.
struct Hosted {
    port: u16,
    metrics: Arc<broker::metrics::Metrics>,
    stop: CancellationToken,
    served: JoinHandle<()>,
}

/// Starts a broker on every interface, on a port the system picks.
async fn start_broker(
    config: broker::Config,
) -> Result<Hosted, Box<dyn std::error::Error + Send + Sync>> {
    let opened = broker::Broker::open(config).await?;
    let metrics = opened.metrics();
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
    let port = listener.local_addr()?.port();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let served = tokio::spawn(async move {
        if let Err(e) = opened.serve(listener, token).await {
            tracing::error!(error = %e, "peer mode: the broker stopped");
        }
    });
    Ok(Hosted {
        port,
        metrics,
        stop,
        served,
    })
}
