//! The [`Node`] trait a node type implements, and the [`Context`] its hooks act through.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::Message;
use proto::TopicFilter;
use serde_json::Value;

use crate::client::{Client, IntoTopicFilter, IntoTopicName, Replies};
use crate::error::{Error, Result};

/// Any error a hook may return; `?` works on every error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a hook returns. An error from `setup` stops the node; an error from the other hooks is
/// logged and the node carries on (one bad message must not take a node down).
pub type HookResult = Result<(), BoxError>;

/// A node type, in the spirit of an Arduino sketch.
///
/// Implement the hooks with `async fn`; the runtime calls them one at a time, never
/// concurrently, so `&mut self` is all the state handling a node needs.
///
/// ```
/// use nodes::{Context, HookResult, Message, Node};
///
/// /// Answers every `echo` request with the data it was sent.
/// struct Echo;
///
/// impl Node for Echo {
///     async fn setup(&mut self, ctx: &mut Context) -> HookResult {
///         ctx.subscribe("echo").await?;
///         Ok(())
///     }
///
///     async fn on_message(&mut self, ctx: &mut Context, msg: Message) -> HookResult {
///         ctx.print(format!("echo {}", msg.data));
///         ctx.reply(&msg, msg.data.clone()).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Node: Send + 'static {
    /// Runs once, on the first connection: subscribe, publish initial values, set the timer.
    /// Subscriptions made here (or later) are remembered and restored on every reconnection;
    /// `setup` is not run again.
    fn setup(&mut self, ctx: &mut Context) -> impl Future<Output = HookResult> + Send;

    /// Runs for each message delivered to the node's subscriptions: its topic, data, sender
    /// (`from`) and reply topic (`reply`, set for a request; answer with [`Context::reply`]).
    fn on_message(
        &mut self,
        ctx: &mut Context,
        msg: Message,
    ) -> impl Future<Output = HookResult> + Send {
        let _ = (ctx, msg);
        async { Ok(()) }
    }

    /// Runs every period set with [`Context::set_timer`], while connected.
    fn on_timer(&mut self, ctx: &mut Context) -> impl Future<Output = HookResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs after a reconnection, once the subscriptions are restored; for instance to publish
    /// retained values again (a restarted broker has forgotten them).
    fn on_reconnect(&mut self, ctx: &mut Context) -> impl Future<Output = HookResult> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = HookResult> + Send + 'a>>;

/// The object-safe twin of [`Node`], so that kinds can be chosen at run time.
trait ErasedNode: Send {
    fn setup<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a>;
    fn on_message<'a>(&'a mut self, ctx: &'a mut Context, msg: Message) -> BoxFuture<'a>;
    fn on_timer<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a>;
    fn on_reconnect<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a>;
}

impl<N: Node> ErasedNode for N {
    fn setup<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a> {
        Box::pin(Node::setup(self, ctx))
    }
    fn on_message<'a>(&'a mut self, ctx: &'a mut Context, msg: Message) -> BoxFuture<'a> {
        Box::pin(Node::on_message(self, ctx, msg))
    }
    fn on_timer<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a> {
        Box::pin(Node::on_timer(self, ctx))
    }
    fn on_reconnect<'a>(&'a mut self, ctx: &'a mut Context) -> BoxFuture<'a> {
        Box::pin(Node::on_reconnect(self, ctx))
    }
}

/// A node of any type, boxed: what the [`kinds`](crate::kinds) registry builds.
pub struct AnyNode(Box<dyn ErasedNode>);

impl AnyNode {
    /// Boxes a node.
    pub fn new(node: impl Node) -> Self {
        Self(Box::new(node))
    }
}

impl fmt::Debug for AnyNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyNode")
    }
}

impl Node for AnyNode {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        self.0.setup(ctx).await
    }
    async fn on_message(&mut self, ctx: &mut Context, msg: Message) -> HookResult {
        self.0.on_message(ctx, msg).await
    }
    async fn on_timer(&mut self, ctx: &mut Context) -> HookResult {
        self.0.on_timer(ctx).await
    }
    async fn on_reconnect(&mut self, ctx: &mut Context) -> HookResult {
        self.0.on_reconnect(ctx).await
    }
}

/// Where the lines a node prints go: stdout by default; a test may capture them.
#[derive(Clone)]
pub struct Output(Arc<dyn Fn(&str) + Send + Sync>);

impl Output {
    /// One line per call on stdout (errors such as a closed pipe are ignored, not a panic).
    pub fn stdout() -> Self {
        Self(Arc::new(|line| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }))
    }

    /// Nothing printed.
    pub fn silent() -> Self {
        Self(Arc::new(|_| {}))
    }

    /// Each line handed to `f`.
    pub fn from_fn(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Writes one line.
    pub fn line(&self, line: &str) {
        (self.0)(line);
    }
}

impl Default for Output {
    fn default() -> Self {
        Self::stdout()
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Output")
    }
}

/// What a hook can do: publish, subscribe, request, reply, set the timer, print, stop.
///
/// The runtime owns it and swaps the connection underneath on reconnection; while the node is
/// offline, the calls that need the broker return [`Error::Closed`], except
/// [`Context::subscribe`], which is remembered and applied once back online.
pub struct Context {
    name: String,
    kind: String,
    /// The live connection, `None` between connections.
    pub(crate) client: Option<Client>,
    /// Every filter subscribed, in order, restored on each reconnection.
    pub(crate) subscriptions: Vec<TopicFilter>,
    /// The period of `on_timer`, `None` when off.
    pub(crate) timer: Option<Duration>,
    /// Set when a hook changed the timer, so the runtime rebuilds it.
    pub(crate) timer_changed: bool,
    /// Set when the node asked to stop: `Ok` for a clean stop, `Err(reason)` for a failure.
    pub(crate) stop: Option<Result<(), String>>,
    request_timeout: Duration,
    output: Output,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("online", &self.client.is_some())
            .field("subscriptions", &self.subscriptions)
            .field("timer", &self.timer)
            .finish()
    }
}

impl Context {
    pub(crate) fn new(
        name: String,
        kind: String,
        request_timeout: Duration,
        output: Output,
    ) -> Self {
        Self {
            name,
            kind,
            client: None,
            subscriptions: Vec::new(),
            timer: None,
            timer_changed: false,
            stop: None,
            request_timeout,
            output,
        }
    }

    /// The node's name (its `hello` name, unique on the broker).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's kind, such as `pin`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Whether the node is connected right now.
    pub fn is_online(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The live connection, for what the context does not wrap.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    fn live(&self) -> Result<&Client> {
        self.client.as_ref().ok_or(Error::Closed)
    }

    /// Prints a line of the node's conversation, prefixed `[ name ]`. For diagnostics, use
    /// `tracing` instead (the runtime's span names the node).
    pub fn print(&self, line: impl fmt::Display) {
        self.output.line(&format!("[ {} ] {line}", self.name));
    }

    /// Publishes a message.
    ///
    /// # Errors
    /// [`Error::Topic`], [`Error::Broker`], [`Error::Closed`] when offline, [`Error::TimedOut`].
    pub async fn publish(&self, topic: impl IntoTopicName, data: impl Into<Value>) -> Result<()> {
        self.live()?.publish(topic, data).await
    }

    /// Publishes a retained value: the broker keeps it and hands it to later subscribers.
    ///
    /// # Errors
    /// As [`Context::publish`].
    pub async fn publish_retained(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
    ) -> Result<()> {
        self.live()?.publish_retained(topic, data).await
    }

    /// Answers a request: publishes `data` to the message's reply topic. Does nothing for a
    /// message that is not a request (no reply topic).
    ///
    /// # Errors
    /// As [`Context::publish`].
    pub async fn reply(&self, msg: &Message, data: impl Into<Value>) -> Result<()> {
        match &msg.reply {
            Some(reply) => self.live()?.publish(reply, data).await,
            None => Ok(()),
        }
    }

    /// Sends a request and returns the first reply, waiting at most the runtime's request
    /// timeout ([`runtime::Config::request_timeout`](crate::runtime::Config::request_timeout)).
    ///
    /// # Errors
    /// [`Error::TimedOut`], [`Error::Closed`], [`Error::Topic`], [`Error::Broker`].
    pub async fn request(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
    ) -> Result<Message> {
        self.live()?
            .request(topic, data, self.request_timeout)
            .await
    }

    /// Sends a request and returns the first reply, waiting at most `wait`.
    ///
    /// # Errors
    /// As [`Context::request`].
    pub async fn request_timeout(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        wait: Duration,
    ) -> Result<Message> {
        self.live()?.request(topic, data, wait).await
    }

    /// Sends a request and collects every reply arriving within `window`, up to `max`; see
    /// [`Client::request_many`].
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Topic`], [`Error::Broker`], [`Error::TimedOut`].
    pub async fn request_many(
        &self,
        topic: impl IntoTopicName,
        data: impl Into<Value>,
        window: Duration,
        max: Option<usize>,
    ) -> Result<Replies> {
        self.live()?.request_many(topic, data, window, max).await
    }

    /// Subscribes to a filter, now and after every reconnection. Offline, the filter is only
    /// remembered and this returns `Ok`.
    ///
    /// # Errors
    /// [`Error::Topic`] for an invalid filter; [`Error::Broker`] when the broker refuses it
    /// (then it is not remembered); [`Error::TimedOut`].
    pub async fn subscribe(&mut self, filter: impl IntoTopicFilter) -> Result<()> {
        let filter = filter.into_topic_filter()?;
        if !self.subscriptions.contains(&filter) {
            self.subscriptions.push(filter.clone());
        }
        let Some(client) = &self.client else {
            return Ok(());
        };
        match client.subscribe(&filter).await {
            Ok(()) | Err(Error::Closed) => Ok(()),
            Err(e @ Error::Broker { .. }) => {
                self.subscriptions.retain(|f| f != &filter);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends a subscription, now and for later reconnections.
    ///
    /// # Errors
    /// [`Error::Topic`], [`Error::Broker`], [`Error::TimedOut`].
    pub async fn unsubscribe(&mut self, filter: impl IntoTopicFilter) -> Result<()> {
        let filter = filter.into_topic_filter()?;
        self.subscriptions.retain(|f| f != &filter);
        match &self.client {
            None => Ok(()),
            Some(client) => match client.unsubscribe(&filter).await {
                Ok(()) | Err(Error::Closed) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Runs `on_timer` every `period`, the first time right after the current hook returns.
    /// Replaces any earlier timer. The timer runs while the node is connected.
    pub fn set_timer(&mut self, period: Duration) {
        self.timer = Some(period.max(Duration::from_millis(1)));
        self.timer_changed = true;
    }

    /// Stops the timer.
    pub fn clear_timer(&mut self) {
        self.timer = None;
        self.timer_changed = true;
    }

    /// Stops the node once the current hook returns; the runtime then returns `Ok`.
    pub fn stop(&mut self) {
        self.stop.get_or_insert(Ok(()));
    }

    /// Stops the node once the current hook returns; the runtime then returns
    /// [`Error::Failed`] with this reason.
    pub fn fail(&mut self, reason: impl fmt::Display) {
        self.stop.get_or_insert(Err(reason.to_string()));
    }
}

/// Formats a value for a conversation line: JSON, with `", "` between array items, so that
/// bits read `[1, 0, 1]`.
pub fn show(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Context {
        Context::new(
            "pin-1".into(),
            "pin".into(),
            Duration::from_secs(1),
            Output::silent(),
        )
    }

    #[test]
    fn show_spaces_arrays_like_the_article() {
        assert_eq!(show(&json!([1, 0, 1])), "[1, 0, 1]");
        assert_eq!(show(&json!([[1], []])), "[[1], []]");
        assert_eq!(show(&json!(3)), "3");
        assert_eq!(show(&json!("pin-1")), "\"pin-1\"");
    }

    #[test]
    fn print_prefixes_the_name() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut c = ctx();
        c.output = Output::from_fn(move |l| tx.send(l.to_string()).unwrap());
        c.print("> 0");
        assert_eq!(rx.recv().unwrap(), "[ pin-1 ] > 0");
    }

    #[tokio::test]
    async fn offline_subscriptions_are_remembered_once() {
        let mut c = ctx();
        c.subscribe("clock/tick").await.unwrap();
        c.subscribe("clock/tick").await.unwrap();
        c.subscribe("pin/+/state").await.unwrap();
        assert_eq!(c.subscriptions.len(), 2);
        c.unsubscribe("clock/tick").await.unwrap();
        assert_eq!(c.subscriptions, [TopicFilter::new("pin/+/state").unwrap()]);
        assert!(c.subscribe("a/#/b").await.is_err());
    }

    #[tokio::test]
    async fn offline_publish_is_closed() {
        let c = ctx();
        assert!(matches!(c.publish("a", 1).await, Err(Error::Closed)));
        assert!(matches!(c.request("a", 1).await, Err(Error::Closed)));
    }

    #[test]
    fn first_stop_wins() {
        let mut c = ctx();
        c.fail("broken");
        c.stop();
        assert_eq!(c.stop, Some(Err("broken".into())));
    }

    #[test]
    fn timer_changes_are_flagged() {
        let mut c = ctx();
        c.set_timer(Duration::from_secs(1));
        assert!(c.timer_changed);
        assert_eq!(c.timer, Some(Duration::from_secs(1)));
        c.clear_timer();
        assert_eq!(c.timer, None);
    }
}
