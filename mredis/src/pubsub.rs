//! Pub/Sub across the fleet: one subscriber for every server.
//!
//! `PUBLISH` (and `SPUBLISH`) are routed by channel, like a key, so a
//! message goes to the channel's owner. A [`Subscriber`] therefore
//! SUBSCRIBEs each channel on the server that owns it, PSUBSCRIBEs each
//! pattern on every server (a pattern can match channels of any server, and
//! keyspace notifications are per server), and merges everything into one
//! stream of [`Event`]s, each message tagged with its server.
//!
//! Each server has its own connection, kept by a background task: when a
//! server restarts or the connection drops, the stream says so
//! ([`Event::Lost`]), the task reconnects by itself, subscribes again to
//! everything it had, and says so too ([`Event::Resubscribed`], with how
//! long it was away). Messages published on that server in between are
//! lost, as with any Redis subscriber: the two events mark the gap.
//!
//! Keyspace notifications of the whole fleet arrive through a pattern,
//! once the servers have them on (`notify-keyspace-events`):
//!
//! ```no_run
//! # async fn demo() -> redis::RedisResult<()> {
//! use futures::StreamExt;
//! let mr = mredis::aio::MRedis::connect(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"]).await?;
//! let _: mredis::PerServer<()> = mr.config_set(&["notify-keyspace-events", "Ex"]).await?;
//! let mut sub = mr.subscriber()?;
//! sub.psubscribe("__keyevent@0__:expired").await?;
//! while let Some(event) = sub.next().await {
//!     if let mredis::Event::Message(m) = event {
//!         println!("{} expired on {}", m.payload_str(), m.server());
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::{RedisResult, ToRedisArgs};
use tokio::sync::{mpsc, oneshot};

use crate::error::client_error;
use crate::routing::{Core, Route};

/// A message from one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    server: String,
    channel: Vec<u8>,
    pattern: Option<Vec<u8>>,
    payload: Vec<u8>,
}

impl Message {
    /// The server it came from (`host:port:db`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The channel it was published to.
    pub fn channel(&self) -> &[u8] {
        &self.channel
    }

    /// The channel as text (lossy).
    pub fn channel_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.channel)
    }

    /// The pattern it matched, for pattern subscriptions.
    pub fn pattern(&self) -> Option<&[u8]> {
        self.pattern.as_deref()
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as text (lossy).
    pub fn payload_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// What a [`Subscriber`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message.
    Message(Message),
    /// The connection to `server` was lost; messages published there are
    /// missed until [`Event::Resubscribed`].
    Lost {
        /// The server.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The connection to `server` is back and every subscription is in
    /// place again, `after` the loss.
    Resubscribed {
        /// The server.
        server: String,
        /// How long the subscriptions were away.
        after: Duration,
    },
}

enum Control {
    Subscribe(Vec<u8>, oneshot::Sender<RedisResult<()>>),
    Unsubscribe(Vec<u8>, oneshot::Sender<RedisResult<()>>),
    PSubscribe(Vec<u8>, oneshot::Sender<RedisResult<()>>),
    PUnsubscribe(Vec<u8>, oneshot::Sender<RedisResult<()>>),
}

/// A subscriber over every server of a client (async; for the sync client
/// see [`MRedis::subscriber`](crate::MRedis::subscriber)). A
/// `futures::Stream` of [`Event`]s. Dropping it closes its connections.
pub struct Subscriber {
    core: Arc<Core>,
    controls: Vec<mpsc::UnboundedSender<Control>>,
    events: mpsc::UnboundedReceiver<Event>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("servers", &self.controls.len())
            .finish()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn one_arg<T: ToRedisArgs>(what: &str, value: T) -> RedisResult<Vec<u8>> {
    let mut args = value.to_redis_args();
    if args.len() != 1 {
        return Err(client_error(format!("{what} must be one argument, got {}", args.len())));
    }
    Ok(args.pop().unwrap_or_default())
}

impl Subscriber {
    /// Starts one connection task per server (on the current tokio runtime).
    pub(crate) fn start(core: Arc<Core>) -> RedisResult<Subscriber> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut controls = Vec::new();
        let mut tasks = Vec::new();
        for server in core.current_servers() {
            let client = server.client().map_err(|e| crate::error::name_server(server, e))?;
            let (tx, rx) = mpsc::unbounded_channel();
            controls.push(tx);
            tasks.push(tokio::spawn(serve(server.clone(), client, rx, events_tx.clone())));
        }
        Ok(Subscriber {
            core,
            controls,
            events,
            tasks,
        })
    }

    async fn ask(
        &self,
        server: usize,
        make: impl FnOnce(oneshot::Sender<RedisResult<()>>) -> Control,
    ) -> RedisResult<()> {
        let (tx, rx) = oneshot::channel();
        let control = self
            .controls
            .get(server)
            .ok_or_else(|| client_error(format!("no server {server}")))?;
        control
            .send(make(tx))
            .map_err(|_| client_error("the subscriber's connection task ended".to_string()))?;
        rx.await
            .map_err(|_| client_error("the subscriber's connection task ended".to_string()))?
    }

    fn owner(&self, channel: &[u8]) -> RedisResult<usize> {
        match self.core.route_key("SUBSCRIBE", &channel)? {
            Route::One { server, .. } => Ok(server),
            Route::Split(_) => Err(client_error("a channel has one server".to_string())),
        }
    }

    /// SUBSCRIBEs `channel` on the server that owns it (where `publish`
    /// sends). Returns once the server confirmed it, or, while that
    /// server is unreachable, once it is recorded (it is subscribed as soon
    /// as the server is back).
    pub async fn subscribe<C: ToRedisArgs>(&mut self, channel: C) -> RedisResult<()> {
        let channel = one_arg("channel", channel)?;
        let server = self.owner(&channel)?;
        self.ask(server, |tx| Control::Subscribe(channel, tx)).await
    }

    /// UNSUBSCRIBEs `channel`.
    pub async fn unsubscribe<C: ToRedisArgs>(&mut self, channel: C) -> RedisResult<()> {
        let channel = one_arg("channel", channel)?;
        let server = self.owner(&channel)?;
        self.ask(server, |tx| Control::Unsubscribe(channel, tx)).await
    }

    /// PSUBSCRIBEs `pattern` on every server.
    pub async fn psubscribe<P: ToRedisArgs>(&mut self, pattern: P) -> RedisResult<()> {
        let pattern = one_arg("pattern", pattern)?;
        for server in 0..self.controls.len() {
            let p = pattern.clone();
            self.ask(server, |tx| Control::PSubscribe(p, tx)).await?;
        }
        Ok(())
    }

    /// PUNSUBSCRIBEs `pattern` on every server.
    pub async fn punsubscribe<P: ToRedisArgs>(&mut self, pattern: P) -> RedisResult<()> {
        let pattern = one_arg("pattern", pattern)?;
        for server in 0..self.controls.len() {
            let p = pattern.clone();
            self.ask(server, |tx| Control::PUnsubscribe(p, tx)).await?;
        }
        Ok(())
    }

    /// The next event, waiting for it.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one has arrived.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl futures::Stream for Subscriber {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

/// One server's connection: keeps the subscriptions, forwards messages,
/// reconnects and subscribes again after a loss.
async fn serve(
    server: crate::server::Server,
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
) {
    let name = server.name().to_string();
    let mut channels: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut patterns: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut lost_at: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(_) => {
                // Down: record what is asked meanwhile, try again soon.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        c = control.recv() => match c {
                            None => return,
                            Some(c) => record(c, &mut channels, &mut patterns),
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let (mut sink, mut stream) = pubsub.split();
        let mut restored = Ok(());
        for c in &channels {
            if let Err(e) = sink.subscribe(&c[..]).await {
                restored = Err(e);
            }
        }
        for p in &patterns {
            if let Err(e) = sink.psubscribe(&p[..]).await {
                restored = Err(e);
            }
        }
        if restored.is_err() {
            continue;
        }
        if let Some(at) = lost_at.take() {
            let _ = events.send(Event::Resubscribed {
                server: name.clone(),
                after: at.elapsed(),
            });
        }
        loop {
            tokio::select! {
                c = control.recv() => {
                    let Some(c) = c else { return };
                    let (reply, result) = match c {
                        Control::Subscribe(ch, tx) => {
                            let r = sink.subscribe(&ch[..]).await;
                            if r.is_ok() { channels.insert(ch); }
                            (tx, r)
                        }
                        Control::Unsubscribe(ch, tx) => {
                            let r = sink.unsubscribe(&ch[..]).await;
                            channels.remove(&ch);
                            (tx, r)
                        }
                        Control::PSubscribe(p, tx) => {
                            let r = sink.psubscribe(&p[..]).await;
                            if r.is_ok() { patterns.insert(p); }
                            (tx, r)
                        }
                        Control::PUnsubscribe(p, tx) => {
                            let r = sink.punsubscribe(&p[..]).await;
                            patterns.remove(&p);
                            (tx, r)
                        }
                    };
                    let _ = reply.send(result.map_err(|e| crate::error::name_server(&server, e)));
                }
                m = stream.next() => match m {
                    Some(m) => {
                        let message = Message {
                            server: name.clone(),
                            channel: m.get_channel().unwrap_or_default(),
                            pattern: if m.from_pattern() { m.get_pattern().ok() } else { None },
                            payload: m.get_payload_bytes().to_vec(),
                        };
                        if events.send(Event::Message(message)).is_err() {
                            return;
                        }
                    }
                    None => {
                        lost_at = Some(Instant::now());
                        let _ = events.send(Event::Lost {
                            server: name.clone(),
                            reason: "the connection closed (server restarted or unreachable)".to_string(),
                        });
                        break;
                    }
                },
            }
        }
    }
}

/// A subscription asked for while the server is down: kept, applied on
/// reconnection.
fn record(c: Control, channels: &mut BTreeSet<Vec<u8>>, patterns: &mut BTreeSet<Vec<u8>>) {
    match c {
        Control::Subscribe(ch, tx) => {
            channels.insert(ch);
            let _ = tx.send(Ok(()));
        }
        Control::Unsubscribe(ch, tx) => {
            channels.remove(&ch);
            let _ = tx.send(Ok(()));
        }
        Control::PSubscribe(p, tx) => {
            patterns.insert(p);
            let _ = tx.send(Ok(()));
        }
        Control::PUnsubscribe(p, tx) => {
            patterns.remove(&p);
            let _ = tx.send(Ok(()));
        }
    }
}

/// The sync subscriber: the same, carried by a small runtime of its own;
/// an iterator of [`Event`]s. Made by
/// [`MRedis::subscriber`](crate::MRedis::subscriber).
pub struct SyncSubscriber {
    runtime: tokio::runtime::Runtime,
    inner: Subscriber,
}

impl std::fmt::Debug for SyncSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSubscriber").field("inner", &self.inner).finish()
    }
}

impl SyncSubscriber {
    pub(crate) fn start(core: Arc<Core>) -> RedisResult<SyncSubscriber> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mredis-subscriber")
            .enable_all()
            .build()
            .map_err(|e| client_error(format!("cannot start the subscriber's runtime: {e}")))?;
        let inner = {
            let _guard = runtime.enter();
            Subscriber::start(core)?
        };
        Ok(SyncSubscriber { runtime, inner })
    }

    /// SUBSCRIBEs `channel` on the server that owns it.
    pub fn subscribe<C: ToRedisArgs>(&mut self, channel: C) -> RedisResult<()> {
        self.runtime.block_on(self.inner.subscribe(channel))
    }

    /// UNSUBSCRIBEs `channel`.
    pub fn unsubscribe<C: ToRedisArgs>(&mut self, channel: C) -> RedisResult<()> {
        self.runtime.block_on(self.inner.unsubscribe(channel))
    }

    /// PSUBSCRIBEs `pattern` on every server.
    pub fn psubscribe<P: ToRedisArgs>(&mut self, pattern: P) -> RedisResult<()> {
        self.runtime.block_on(self.inner.psubscribe(pattern))
    }

    /// PUNSUBSCRIBEs `pattern` on every server.
    pub fn punsubscribe<P: ToRedisArgs>(&mut self, pattern: P) -> RedisResult<()> {
        self.runtime.block_on(self.inner.punsubscribe(pattern))
    }

    /// The next event, waiting at most `timeout` (`None`: for ever).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Option<Event> {
        let inner = &mut self.inner;
        self.runtime.block_on(async move {
            match timeout {
                Some(t) => tokio::time::timeout(t, inner.next_event()).await.ok().flatten(),
                None => inner.next_event().await,
            }
        })
    }
}

impl Iterator for SyncSubscriber {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event(None)
    }
}
