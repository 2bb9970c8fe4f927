//! Runs a [`Node`] against a broker, doing all the plumbing.
//!
//! ```text
//!        ┌──── connect (ws:// or wss://…, MessagePack) ◄──── BrokerSource (URL, may change)
//!        │                   │ fails: wait Backoff, retry
//!        │                 hello(name, kind) ── name_taken: retry a while (stale old session)
//!        │                   │
//!        │   first time: setup()          later: re-subscribe, on_reconnect()
//!        │                   │
//!        │    loop: on_message(msg) | on_timer() | shutdown | URL changed
//!        └──── connection lost ◄─┘
//! ```
//!
//! A broker restart costs a node nothing but the messages published while it was away: the
//! runtime reconnects with capped exponential backoff and jitter, says `hello` again (retrying
//! on `name_taken`, since the broker may not have noticed the old connection yet), restores
//! every subscription, and carries on. `setup` runs once in the node's life.

use std::time::Duration;

use discovery::BrokerChoice;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::client::{Client, ConnectOptions, Messages};
use crate::error::{Error, Result};
use crate::node::{Context, HookResult, Node, Output};

/// A broker to connect to: its URL and, when discovery learnt it from the broker's TXT record,
/// the fingerprint of its TLS certificate, pinned unless the node's
/// [`ConnectOptions::tls`] says whom to trust (see [`ConnectOptions::pinning_discovered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Where to connect (`ws://` or `wss://`).
    pub url: String,
    /// The advertised SHA-256 of its certificate.
    pub fingerprint: Option<[u8; 32]>,
}

impl From<String> for Broker {
    fn from(url: String) -> Self {
        Self {
            url,
            fingerprint: None,
        }
    }
}

impl From<&str> for Broker {
    fn from(url: &str) -> Self {
        url.to_string().into()
    }
}

impl From<&BrokerChoice> for Broker {
    fn from(choice: &BrokerChoice) -> Self {
        Self {
            url: choice.url.clone(),
            fingerprint: choice.fingerprint,
        }
    }
}

/// Where the runtime finds the broker: a URL that may be absent for a while and may change.
///
/// A fixed URL ([`BrokerSource::fixed`]), the brokers mDNS finds as they come and go
/// ([`BrokerSource::discovered`], with the certificate fingerprint they advertise), or any
/// [`watch`] channel of brokers ([`BrokerSource::watch`]). A change while connected (another
/// URL, another fingerprint) makes the node move to the new broker.
#[derive(Debug, Clone)]
pub struct BrokerSource {
    rx: watch::Receiver<Option<Broker>>,
}

impl BrokerSource {
    /// Always the same broker.
    pub fn fixed(url: impl Into<String>) -> Self {
        let (_tx, rx) = watch::channel(Some(Broker::from(url.into())));
        Self { rx }
    }

    /// The broker named by the latest value of a watch channel (`None`: none known yet).
    pub fn watch(rx: watch::Receiver<Option<Broker>>) -> Self {
        Self { rx }
    }

    /// The broker discovery picks, as [`discovery::follow_brokers`] reports it, with the
    /// fingerprint it advertises. Spawns a task (so call it inside a tokio runtime) that ends
    /// with the channel.
    pub fn discovered(mut choice: watch::Receiver<Option<BrokerChoice>>) -> Self {
        let (tx, rx) = watch::channel(choice.borrow().as_ref().map(Broker::from));
        tokio::spawn(async move {
            while choice.changed().await.is_ok() {
                let broker = choice.borrow_and_update().as_ref().map(Broker::from);
                if tx.send(broker).is_err() {
                    return;
                }
            }
        });
        Self { rx }
    }

    /// The URL now, if any.
    pub fn current(&self) -> Option<String> {
        self.rx.borrow().as_ref().map(|b| b.url.clone())
    }

    /// Waits for a broker (returns at once when there is one).
    ///
    /// # Errors
    /// [`Error::NoBroker`] when the source ended without any.
    async fn wait_broker(&mut self) -> Result<Broker> {
        loop {
            if let Some(broker) = self.rx.borrow_and_update().clone() {
                return Ok(broker);
            }
            self.rx.changed().await.map_err(|_| Error::NoBroker)?;
        }
    }

    /// Resolves when the broker changes to something else than `current`; never when the
    /// source cannot change any more.
    async fn moved_from(&mut self, current: &Broker) {
        loop {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if self.rx.borrow_and_update().as_ref() != Some(current) {
                return;
            }
        }
    }
}

/// How a node runs. Build it with [`Config::new`] and change what you need.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's `hello` name, unique among the clients of a broker.
    pub name: String,
    /// Its kind, such as `pin`; shown in the broker's presence entry.
    pub kind: String,
    /// Waits between connection attempts.
    pub backoff: Backoff,
    /// Connection settings; nodes speak MessagePack.
    pub connect: ConnectOptions,
    /// How long [`Context::request`] waits for the first reply.
    pub request_timeout: Duration,
    /// How long to keep saying `hello` while the broker answers `name_taken` before giving up
    /// (after a reconnection the broker may still hold the old connection for a moment).
    pub name_taken_patience: Duration,
    /// Where [`Context::print`] writes.
    pub output: Output,
}

impl Config {
    /// The defaults for a node of this name and kind.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            backoff: Backoff::default(),
            connect: ConnectOptions::default(),
            request_timeout: Duration::from_secs(5),
            name_taken_patience: Duration::from_secs(10),
            output: Output::stdout(),
        }
    }
}

/// Where a node is in its life, published by [`spawn`] on [`NodeHandle::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Looking for the broker for the first time.
    Connecting,
    /// Connected, greeted, subscriptions acknowledged (and `setup` done).
    Online {
        /// The broker's URL.
        url: String,
    },
    /// Lost the broker; reconnecting.
    Offline,
    /// The node has stopped.
    Stopped,
}

/// A node running in its own task.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's [`Status`], as it changes.
    pub status: watch::Receiver<Status>,
    name: String,
    task: JoinHandle<Result<()>>,
}

impl NodeHandle {
    /// Waits until the node is online for the first time: connected, `setup` done and every
    /// subscription acknowledged by the broker.
    ///
    /// # Errors
    /// [`Error::Closed`] when the node stopped before (see [`NodeHandle::join`] for why).
    pub async fn ready(&mut self) -> Result<()> {
        let status = self
            .status
            .wait_for(|s| matches!(s, Status::Online { .. } | Status::Stopped))
            .await
            .map_err(|_| Error::Closed)?;
        match *status {
            Status::Online { .. } => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    /// Waits for the node to stop and returns how it ended.
    ///
    /// # Errors
    /// What [`run`] returns; [`Error::Failed`] if the node's task panicked.
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Failed {
                name: self.name,
                reason: "its task ended abnormally".into(),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the node has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Runs a node in a new task; see [`run`].
pub fn spawn<N: Node>(
    node: N,
    config: Config,
    broker: BrokerSource,
    shutdown: CancellationToken,
) -> NodeHandle {
    let (status_tx, status) = watch::channel(Status::Connecting);
    let span = tracing::info_span!("node", name = %config.name);
    let name = config.name.clone();
    let task = tokio::spawn(
        Runtime::new(config, broker, shutdown, status_tx)
            .run(node)
            .instrument(span),
    );
    NodeHandle { status, name, task }
}

/// Runs a node until it stops itself or `shutdown` is cancelled, reconnecting as needed.
///
/// # Errors
/// [`Error::Failed`] when `setup` fails or the node calls [`Context::fail`];
/// [`Error::Broker`] when the broker refuses the name for longer than
/// [`Config::name_taken_patience`] or refuses it outright (`bad_name`);
/// [`Error::NoBroker`] when the broker source ends without a URL.
pub async fn run<N: Node>(
    node: N,
    config: Config,
    broker: BrokerSource,
    shutdown: CancellationToken,
) -> Result<()> {
    let (status_tx, _status) = watch::channel(Status::Connecting);
    let span = tracing::info_span!("node", name = %config.name);
    Runtime::new(config, broker, shutdown, status_tx)
        .run(node)
        .instrument(span)
        .await
}

/// A connection that lasted less than this counts as a flap (see `Runtime::serve`).
const STEADY: Duration = Duration::from_secs(1);

/// Why the event loop of one connection ended.
enum LoopEnd {
    /// Shutdown, or the node stopped itself: the run is over.
    Done,
    /// The connection was lost or the broker moved: reconnect.
    Reconnect,
}

struct Runtime {
    config: Config,
    broker: BrokerSource,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
    rng: StdRng,
}

impl Runtime {
    fn new(
        config: Config,
        broker: BrokerSource,
        shutdown: CancellationToken,
        status: watch::Sender<Status>,
    ) -> Self {
        Self {
            config,
            broker,
            shutdown,
            status,
            rng: StdRng::from_os_rng(),
        }
    }

    async fn run<N: Node>(mut self, mut node: N) -> Result<()> {
        let result = self.serve(&mut node).await;
        self.status.send_replace(Status::Stopped);
        if let Err(e) = &result {
            // As an error value, so that the log shows its sources too.
            tracing::error!(error = e as &dyn std::error::Error, "node stopped");
        }
        result
    }

    async fn serve<N: Node>(&mut self, node: &mut N) -> Result<()> {
        let mut ctx = Context::new(
            self.config.name.clone(),
            self.config.kind.clone(),
            self.config.request_timeout,
            self.config.output.clone(),
        );
        let mut timer: Option<Interval> = None;
        let mut first = true;
        // Connections in a row that ended within `STEADY` of starting: each waits longer
        // before the next attempt, so a broker that accepts and drops at once is not hammered.
        let mut flaps: u32 = 0;
        loop {
            if flaps > 0 && !self.pause(flaps - 1).await {
                return self.finish(&mut ctx).await;
            }
            let Some((broker, client, mut messages)) = self.connect().await? else {
                return Ok(());
            };
            let connected_at = Instant::now();
            let url = broker.url.clone();
            ctx.client = Some(client.clone());
            let prepared = if first {
                match self.hook(node.setup(&mut ctx)).await {
                    // The connection dropped under `setup`: run it again on the next one.
                    Some(Err(e)) if client.is_closed() => {
                        tracing::warn!(error = %e, "connection lost during setup; retrying");
                        ctx.client = None;
                        flaps += 1;
                        continue;
                    }
                    other => other.map(|r| {
                        r.map_err(|e| Error::Failed {
                            name: self.config.name.clone(),
                            reason: "setup".into(),
                            source: Some(e),
                        })
                    }),
                }
            } else {
                self.restore(node, &mut ctx).await
            };
            match prepared {
                None => return self.finish(&mut ctx).await,
                Some(Err(e)) => {
                    client.close().await;
                    return Err(e);
                }
                Some(Ok(())) => {}
            }
            if !client.is_closed() {
                let again = if first { "online at" } else { "back online at" };
                ctx.print(format!("{again} {url}"));
                tracing::debug!(%url, "node ready");
                self.status
                    .send_replace(Status::Online { url: url.clone() });
            }
            first = false;
            match self
                .event_loop(node, &mut ctx, &mut messages, &mut timer, &broker)
                .await
            {
                LoopEnd::Done => return self.finish(&mut ctx).await,
                LoopEnd::Reconnect => {
                    client.close().await;
                    ctx.client = None;
                    if connected_at.elapsed() < STEADY {
                        flaps = flaps.saturating_add(1);
                    } else {
                        flaps = 0;
                    }
                    self.status.send_replace(Status::Offline);
                    ctx.print("offline, reconnecting");
                }
            }
        }
    }

    /// After a reconnection: subscriptions back, then the node's `on_reconnect`.
    /// `None` on shutdown.
    async fn restore<N: Node>(&mut self, node: &mut N, ctx: &mut Context) -> Option<Result<()>> {
        if let Some(client) = ctx.client.clone() {
            for filter in ctx.subscriptions.clone() {
                if let Err(e) = client.subscribe(&filter).await {
                    tracing::warn!(%filter, error = %e, "could not restore a subscription");
                }
            }
        }
        let result = self.hook(node.on_reconnect(ctx)).await?;
        log_hook_error("on_reconnect", result);
        Some(Ok(()))
    }

    /// Ends the run the way the node asked (or cleanly on shutdown).
    async fn finish(&self, ctx: &mut Context) -> Result<()> {
        if let Some(client) = ctx.client.take() {
            client.close().await;
        }
        match ctx.stop.take() {
            Some(Err(reason)) => Err(Error::Failed {
                name: self.config.name.clone(),
                reason,
                source: None,
            }),
            _ => Ok(()),
        }
    }

    /// Waits the backoff of attempt `attempt`; false on shutdown.
    async fn pause(&mut self, attempt: u32) -> bool {
        let wait = self.config.backoff.delay(attempt, &mut self.rng);
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Runs a hook unless shutdown comes first (`None`).
    async fn hook(
        &self,
        hook: impl std::future::Future<Output = HookResult>,
    ) -> Option<HookResult> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            result = hook => Some(result),
        }
    }

    async fn event_loop<N: Node>(
        &mut self,
        node: &mut N,
        ctx: &mut Context,
        messages: &mut Messages,
        timer: &mut Option<Interval>,
        current: &Broker,
    ) -> LoopEnd {
        let mut broker = self.broker.clone();
        let url = &current.url;
        loop {
            if ctx.stop.is_some() {
                return LoopEnd::Done;
            }
            if std::mem::take(&mut ctx.timer_changed) {
                *timer = ctx.timer.map(|period| {
                    let mut t = tokio::time::interval(period);
                    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    t
                });
            }
            let result = tokio::select! {
                // In this order: a broker that moved is seen even while messages or ticks keep
                // coming (a clock whose ticks nobody answers is always due for the next one).
                biased;
                () = self.shutdown.cancelled() => return LoopEnd::Done,
                () = broker.moved_from(current) => {
                    tracing::info!(from = %url, "the broker moved");
                    return LoopEnd::Reconnect;
                }
                msg = messages.recv() => match msg {
                    Some(msg) => self.hook(node.on_message(ctx, msg)).await.map(|r| ("on_message", r)),
                    None => {
                        tracing::warn!(%url, "connection to the broker lost");
                        return LoopEnd::Reconnect;
                    }
                },
                () = tick(timer) => self.hook(node.on_timer(ctx)).await.map(|r| ("on_timer", r)),
            };
            match result {
                None => return LoopEnd::Done,
                Some((name, result)) => log_hook_error(name, result),
            }
        }
    }

    /// Connects and says `hello`, retrying with backoff. `None` on shutdown.
    ///
    /// Errors that no retry can mend end the node: a refused name, an address or a trust
    /// that cannot be used (a bad URL, `ws://` with a CA or a pin, a bad CA, a bad token).
    /// A broker that refuses the token or shows another certificate is retried: its auth file
    /// may be reloaded, and a new pin may come with its next advertisement.
    async fn connect(&mut self) -> Result<Option<(Broker, Client, Messages)>> {
        let mut attempt: u32 = 0;
        let mut name_taken_since: Option<Instant> = None;
        loop {
            let broker = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(None),
                broker = self.broker.wait_broker() => broker?,
            };
            let url = &broker.url;
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(None),
                r = self.greet(&broker) => r,
            };
            match connected {
                Ok((client, messages)) => return Ok(Some((broker, client, messages))),
                Err(Error::Broker { code, message }) if code == proto::ErrorCode::NameTaken => {
                    let since = *name_taken_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.config.name_taken_patience {
                        return Err(Error::Broker { code, message });
                    }
                    tracing::warn!(name = %self.config.name, "name taken on the broker; retrying");
                }
                Err(
                    e @ (Error::Broker { .. }
                    | Error::BadUrl { .. }
                    | Error::NotTls { .. }
                    | Error::BadCa(_)
                    | Error::BadToken),
                ) => return Err(e),
                Err(e) => {
                    // Whoever fixes credentials or a pin wants to see each refusal.
                    let refused = matches!(
                        e,
                        Error::Unauthorized { .. } | Error::FingerprintMismatch { .. }
                    );
                    if attempt == 0 || refused {
                        tracing::warn!(%url, error = %e, "cannot reach the broker; retrying");
                    } else {
                        tracing::debug!(%url, attempt, error = %e, "cannot reach the broker");
                    }
                }
            }
            if !self.pause(attempt).await {
                return Ok(None);
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// One attempt: connect (pinning the broker's advertised fingerprint unless the node has
    /// a trust of its own), then `hello`.
    async fn greet(&self, broker: &Broker) -> Result<(Client, Messages)> {
        let options = self.config.connect.pinning_discovered(broker.fingerprint);
        let (client, messages) = Client::connect(&broker.url, options).await?;
        match client
            .hello(&self.config.name, Some(&self.config.kind))
            .await
        {
            Ok(()) => Ok((client, messages)),
            Err(e) => {
                client.close().await;
                Err(e)
            }
        }
    }
}

/// Resolves at the timer's next tick; never when there is no timer.
async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn log_hook_error(hook: &str, result: HookResult) {
    if let Err(e) = result {
        tracing::warn!(hook, error = %e, "hook failed; the node carries on");
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn fixed_source_gives_its_url_and_never_moves() {
        let mut s = BrokerSource::fixed("ws://127.0.0.1:1");
        assert_eq!(s.wait_broker().await.unwrap().url, "ws://127.0.0.1:1");
        assert!(s
            .moved_from(&"ws://127.0.0.1:1".into())
            .now_or_never()
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn watched_source_waits_for_a_url_and_sees_moves() {
        let (tx, rx) = watch::channel(None);
        let mut s = BrokerSource::watch(rx);
        let waiter = tokio::spawn({
            let mut s = s.clone();
            async move { s.wait_broker().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_replace(Some("ws://127.0.0.1:2".into()));
        assert_eq!(waiter.await.unwrap().unwrap().url, "ws://127.0.0.1:2");
        s.wait_broker().await.unwrap();
        let moved = tokio::spawn(async move { s.moved_from(&"ws://127.0.0.1:2".into()).await });
        tx.send_replace(Some("ws://127.0.0.1:3".into()));
        tokio::time::timeout(Duration::from_secs(1), moved)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn discovered_source_follows_the_chosen_broker() {
        let choice = |name: &str, port: u16| BrokerChoice {
            name: name.into(),
            fullname: format!("{name}._breadboard._tcp.local."),
            url: format!("ws://127.0.0.1:{port}/"),
            fingerprint: None,
            peer: None,
        };
        let (tx, rx) = watch::channel(Some(choice("a", 2)));
        let mut s = BrokerSource::discovered(rx);
        assert_eq!(s.wait_broker().await.unwrap().url, "ws://127.0.0.1:2/");
        let moved = tokio::spawn(async move {
            s.moved_from(&"ws://127.0.0.1:2/".into()).await;
            s.current()
        });
        tx.send_replace(Some(choice("b", 3)));
        let now = tokio::time::timeout(Duration::from_secs(1), moved)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.as_deref(), Some("ws://127.0.0.1:3/"));
    }

    #[tokio::test]
    async fn an_ended_source_without_url_is_no_broker() {
        let (tx, rx) = watch::channel(None);
        drop(tx);
        let mut s = BrokerSource::watch(rx);
        assert!(matches!(s.wait_broker().await, Err(Error::NoBroker)));
    }

    #[tokio::test]
    async fn a_new_fingerprint_for_the_same_url_is_a_move() {
        let pinned = |fp: u8| Broker {
            url: "wss://10.0.0.1:8765/".into(),
            fingerprint: Some([fp; 32]),
        };
        let (tx, rx) = watch::channel(Some(pinned(1)));
        let mut s = BrokerSource::watch(rx);
        assert_eq!(s.wait_broker().await.unwrap(), pinned(1));
        let moved = tokio::spawn(async move {
            s.moved_from(&pinned(1)).await;
            s.wait_broker().await
        });
        tx.send_replace(Some(pinned(2)));
        let now = tokio::time::timeout(Duration::from_secs(1), moved)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.unwrap(), pinned(2));
    }

    struct Idle;
    impl Node for Idle {
        async fn setup(&mut self, _ctx: &mut Context) -> HookResult {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_node_that_never_reached_its_broker() {
        // Port 1 on loopback: nothing listens there, connections are refused at once.
        let shutdown = CancellationToken::new();
        let mut config = Config::new("idle", "test");
        config.output = Output::silent();
        let mut handle = spawn(
            Idle,
            config,
            BrokerSource::fixed("ws://127.0.0.1:1"),
            shutdown.clone(),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(*handle.status.borrow(), Status::Connecting);
        shutdown.cancel();
        assert!(handle.ready().await.is_err());
        handle.join().await.unwrap();
    }
}
