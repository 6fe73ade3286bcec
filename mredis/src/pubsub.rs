//! Pub/Sub across the fleet: one subscriber for every server.
//!
//! Two subscribers, named like the clients: [`AsyncSubscriber`] (a
//! `Stream`; also `mredis::aio::Subscriber`, from
//! [`aio::MRedis::subscriber`](crate::aio::MRedis::subscriber)) and the sync
//! [`Subscriber`] (an `Iterator`; also `mredis::Subscriber`, from
//! [`MRedis::subscriber`](crate::MRedis::subscriber)).
//!
//! `PUBLISH` (and `SPUBLISH`) are routed by channel, like a key, so a
//! message goes to the channel's owner. An [`AsyncSubscriber`] therefore
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
//! lost, as with any Redis subscriber: the two events mark the gap. A server
//! that cannot be reached when the subscriber starts is reported the same
//! way (a `Lost`, then a `Resubscribed` once it answers).
//!
//! # A bounded buffer: the oldest messages are dropped, and counted
//!
//! Messages wait in one buffer until you take them, bounded by
//! [`SubscriberOptions::max_messages`] (default 10 000) and
//! [`SubscriberOptions::max_bytes`] (default 64 MiB, counting channel,
//! pattern and payload bytes). When a new message would go over either
//! bound, the **oldest buffered message is dropped** and the stream says so
//! at that place with [`Event::Dropped`] (its server and how many of its
//! messages were dropped there; consecutive drops of one server are counted
//! in one event). Every message is therefore accounted for: received, or
//! counted in a `Dropped`. [`AsyncSubscriber::dropped`] gives the total and
//! [`AsyncSubscriber::backlog`] what is waiting now. `Lost`, `Resubscribed` and
//! `Dropped` themselves are never dropped and do not count against the
//! bounds.
//!
//! Why not the other policy, stop reading and let the server's own
//! `client-output-buffer-limit pubsub` disconnect the subscriber? Because
//! then the server drops the *whole* connection once its limit is reached
//! (by default 32 MB, or 8 MB for 60 s): every subscription of that server
//! is gone until the resubscription, nothing says how many messages were
//! lost, and the memory is spent on the server, shared by every client,
//! instead of in the slow process. Dropping the oldest keeps the
//! subscriptions, keeps the other servers' messages flowing, costs the
//! server nothing, and counts exactly what was lost.
//!
//! Nothing else buffers without bound: each connection is read only when
//! the previous read has been taken out of redis-rs (at most one socket
//! read, 8 KiB for small messages, is ever waiting inside redis-rs), so when
//! the process cannot keep up, data waits in the kernel and then in the
//! server's output buffer, where the server's `client-output-buffer-limit
//! pubsub` applies (a `Lost` and a `Resubscribed` then mark the gap). The
//! same holds for TCP and Unix socket servers; a TLS connection is read by
//! redis-rs as fast as it arrives (the messages are still moved into the
//! bounded buffer at once).
//!
//! # Subscribing never stops the stream
//!
//! [`AsyncSubscriber::subscribe`] records the channel first: from then on it is
//! part of the subscriber, subscribed on every (re)connection, whatever
//! happens to the server. The call then waits at most
//! [`SubscriberOptions::confirm_timeout`] (default 5 s) for the server's
//! confirmation; without it, it returns an error saying that the channel is
//! recorded and will be subscribed when the server answers (if the
//! connection was lost, the [`Event::Resubscribed`] of that server says
//! when). The
//! connections of the other servers keep reading meanwhile: their messages
//! wait in the buffer. To subscribe while another task keeps consuming the
//! stream, take a [`Subscriptions`] handle ([`AsyncSubscriber::subscriptions`]):
//! its methods take `&self` and it can be cloned and sent to other tasks.
//!
//! # Subscriptions follow ownership under ejection
//!
//! With health checking and ejection ([`health`](crate::health)), a down
//! server's channels are published on another server. The subscriber
//! watches the placement and moves each channel to where `PUBLISH` for it
//! goes, when a server is ejected and again when it is back. The server a
//! channel moves to reports the gap: an [`Event::Lost`] (the reason says
//! which channels move from where) when the move starts, an
//! [`Event::Resubscribed`] once it has confirmed them. Every message
//! published after that `Resubscribed` arrives; the ones published while
//! the placement changed, before it, may be missed.
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
//!
//! With options (a smaller buffer, a shorter confirmation wait):
//!
//! ```no_run
//! # fn demo() -> redis::RedisResult<()> {
//! use std::time::Duration;
//! use mredis::pubsub::SubscriberOptions;
//! let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
//! let mut sub = mr.subscriber_with(SubscriberOptions {
//!     max_messages: 1_000,
//!     confirm_timeout: Duration::from_secs(1),
//!     ..Default::default()
//! })?;
//! if let Err(e) = sub.subscribe("orders") {
//!     // Not confirmed in time: still recorded, subscribed once the server answers.
//!     eprintln!("{e}");
//! }
//! for event in sub {
//!     match event {
//!         mredis::Event::Message(m) => println!("{}", m.payload_str()),
//!         mredis::Event::Dropped { server, count } => eprintln!("{count} messages of {server} dropped"),
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # After a reconfiguration
//!
//! A subscriber follows its client's
//! [`reconfigure`](crate::MRedis::reconfigure) (and the reconfigurations
//! of every clone, as they share the configuration): its connections to
//! servers that stay are kept as they are, with their subscriptions; a new
//! server gets a connection of its own, with every pattern; each channel
//! whose owner changed is subscribed on its new owner (which reports the
//! gap: an [`Event::Lost`] saying the client was reconfigured, then its
//! [`Event::Resubscribed`]) and unsubscribed on its old one; the
//! connections to servers that left are closed once the moved channels
//! are confirmed on their new owners (or after
//! [`SubscriberOptions::confirm_timeout`]). Messages published to a
//! moving channel between the switch and its confirmation on the new
//! owner may be missed (a publisher routes by the new configuration from
//! the switch on); the other channels lose nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use redis::{ConnectionAddr, RedisResult, ToRedisArgs};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::background::Running;
use crate::error::client_error;
use crate::routing::Topology;

/// A message from one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    server: Arc<str>,
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

    /// What it counts against [`SubscriberOptions::max_bytes`]: channel,
    /// pattern and payload bytes.
    pub fn size(&self) -> usize {
        self.channel.len() + self.payload.len() + self.pattern.as_ref().map_or(0, Vec::len)
    }
}

/// What an [`AsyncSubscriber`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message.
    Message(Message),
    /// Messages of some subscriptions on `server` may be missed from now
    /// until the next [`Event::Resubscribed`] of `server`: all of them when
    /// its connection was lost (or could not be made), or the channels that
    /// move to it from another server when health checking changes the
    /// placement (the reason says which).
    Lost {
        /// The server.
        server: String,
        /// What happened.
        reason: String,
    },
    /// Every subscription that belongs on `server` is in place there
    /// (again), `after` the [`Event::Lost`] that opened the gap.
    Resubscribed {
        /// The server.
        server: String,
        /// How long the gap lasted.
        after: Duration,
    },
    /// The buffer was full: `count` messages of `server`, received at this
    /// place in the stream, were dropped to make room (the oldest go
    /// first; see the module docs).
    Dropped {
        /// The server they came from.
        server: String,
        /// How many.
        count: u64,
    },
}

/// Options of a subscriber ([`MRedis::subscriber_with`](crate::MRedis::subscriber_with),
/// [`aio::MRedis::subscriber_with`](crate::aio::MRedis::subscriber_with)).
///
/// Build it with `..Default::default()` after the fields you set: fields
/// are added in minor releases, each with a default that keeps the
/// behaviour you had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberOptions {
    /// At most this many messages wait in the buffer; beyond, the oldest
    /// is dropped and counted ([`Event::Dropped`]). Default 10 000.
    pub max_messages: usize,
    /// At most this many bytes (channel, pattern and payload) wait in the
    /// buffer; beyond, the oldest message is dropped and counted. A message
    /// larger than this is dropped (and counted) at once. Default 64 MiB.
    pub max_bytes: usize,
    /// How long `subscribe`, `unsubscribe`, `psubscribe` and `punsubscribe`
    /// wait for the servers' confirmation before returning an error (the
    /// change is recorded either way). Default 5 s; a client's
    /// `subscriber()` takes the client's response timeout.
    pub confirm_timeout: Duration,
    /// How long one connection attempt (TCP connect and handshake) may take
    /// before it is given up and retried. Default 5 s; a client's
    /// `subscriber()` takes the client's connect timeout.
    pub connect_timeout: Duration,
}

impl SubscriberOptions {
    /// The defaults with the client's own timeouts: its connect timeout,
    /// and its response timeout for confirmations
    /// ([`MRedis::subscriber`](crate::MRedis::subscriber) uses these).
    fn of_client(running: &Running) -> SubscriberOptions {
        let t = running.core.timeouts;
        SubscriberOptions {
            connect_timeout: t.connect,
            confirm_timeout: t.response,
            ..SubscriberOptions::default()
        }
    }
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            max_messages: 10_000,
            max_bytes: 64 * 1024 * 1024,
            confirm_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What waits in a subscriber's buffer ([`AsyncSubscriber::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Backlog {
    /// Messages waiting.
    pub messages: usize,
    /// Their bytes (channel, pattern and payload).
    pub bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bounded buffer shared by the connection tasks and the consumer.
struct Buffer {
    queue: Mutex<Queue>,
}

struct Queue {
    events: VecDeque<Event>,
    messages: usize,
    bytes: usize,
    dropped: u64,
    max_messages: usize,
    max_bytes: usize,
    waker: Option<Waker>,
}

impl Buffer {
    fn new(options: &SubscriberOptions) -> Buffer {
        Buffer {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                messages: 0,
                bytes: 0,
                dropped: 0,
                max_messages: options.max_messages,
                max_bytes: options.max_bytes,
                waker: None,
            }),
        }
    }

    /// A `Lost` or `Resubscribed` (never dropped).
    fn push_event(&self, event: Event) {
        let waker = {
            let mut q = lock(&self.queue);
            q.events.push_back(event);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn push_message(&self, message: Message) {
        let size = message.size();
        let waker = {
            let mut q = lock(&self.queue);
            if size > q.max_bytes || q.max_messages == 0 {
                let at = q.events.len();
                q.note_drop(&message.server, at);
            } else {
                q.events.push_back(Event::Message(message));
                q.messages += 1;
                q.bytes += size;
                while q.messages > q.max_messages || q.bytes > q.max_bytes {
                    q.drop_oldest();
                }
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn pop(&self, waker: Option<&Waker>) -> Option<Event> {
        let mut q = lock(&self.queue);
        match q.events.pop_front() {
            Some(e) => {
                if let Event::Message(m) = &e {
                    q.messages -= 1;
                    q.bytes -= m.size();
                }
                // A drained burst gives its memory back.
                if q.events.is_empty() && q.events.capacity() > 1024 {
                    q.events.shrink_to(64);
                }
                Some(e)
            }
            None => {
                if let Some(w) = waker
                    && !q.waker.as_ref().is_some_and(|old| old.will_wake(w))
                {
                    q.waker = Some(w.clone());
                }
                None
            }
        }
    }

    fn backlog(&self) -> Backlog {
        let q = lock(&self.queue);
        Backlog {
            messages: q.messages,
            bytes: q.bytes,
        }
    }

    fn dropped(&self) -> u64 {
        lock(&self.queue).dropped
    }
}

impl Queue {
    /// Where the first message is (everything before it is a notice).
    fn first_message(&self) -> usize {
        self.events
            .iter()
            .position(|e| matches!(e, Event::Message(_)))
            .unwrap_or(self.events.len())
    }

    fn drop_oldest(&mut self) {
        let at = self.first_message();
        let Some(Event::Message(m)) = self.events.remove(at) else {
            return;
        };
        self.messages -= 1;
        self.bytes -= m.size();
        self.note_drop(&m.server, at);
    }

    /// Counts a message of `server` dropped at position `at`: in the
    /// `Dropped` of that server just before, if the last event of that
    /// server before `at` is one, or in a new one at `at`.
    fn note_drop(&mut self, server: &str, at: usize) {
        self.dropped += 1;
        for e in self.events.range_mut(..at).rev() {
            match e {
                Event::Dropped { server: s, count } if s == server => {
                    *count += 1;
                    return;
                }
                Event::Dropped { server: s, .. }
                | Event::Lost { server: s, .. }
                | Event::Resubscribed { server: s, .. }
                    if s == server =>
                {
                    break;
                }
                Event::Message(m) if &*m.server == server => break,
                _ => {}
            }
        }
        self.events.insert(
            at,
            Event::Dropped {
                server: server.to_string(),
                count: 1,
            },
        );
    }
}

/// Lets redis-rs read a connection only after everything it read before
/// has been taken out of it: the connection task opens the gate when
/// redis-rs's message queue is empty, one socket read closes it.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// Off during the handshake (nobody takes messages yet).
    armed: bool,
    open: bool,
    reader: Option<Waker>,
    drainer: Option<Waker>,
}

impl Gate {
    fn arm(&self) {
        let mut st = lock(&self.state);
        st.armed = true;
        st.open = true;
    }

    /// The connection task found redis-rs's queue empty.
    fn drained(&self, waker: &Waker) {
        let reader = {
            let mut st = lock(&self.state);
            if !st.drainer.as_ref().is_some_and(|w| w.will_wake(waker)) {
                st.drainer = Some(waker.clone());
            }
            st.open = true;
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    fn may_read(&self, waker: &Waker) -> bool {
        let mut st = lock(&self.state);
        if !st.armed || st.open {
            return true;
        }
        st.reader = Some(waker.clone());
        false
    }

    fn read_done(&self) {
        let drainer = {
            let mut st = lock(&self.state);
            if !st.armed {
                return;
            }
            st.open = false;
            st.drainer.take()
        };
        if let Some(w) = drainer {
            w.wake();
        }
    }
}

/// A socket read through a [`Gate`].
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.gate.may_read(cx.waker()) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.gate.read_done();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    /// The placement watcher caught up: a deferred `Resubscribed` may go.
    Recheck,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Subscribe => "SUBSCRIBE",
            Op::Unsubscribe => "UNSUBSCRIBE",
            Op::PSubscribe => "PSUBSCRIBE",
            Op::PUnsubscribe => "PUNSUBSCRIBE",
            Op::Recheck => "RECHECK",
        }
    }

    fn adds(self) -> bool {
        matches!(self, Op::Subscribe | Op::PSubscribe)
    }
}

type Reply = oneshot::Sender<RedisResult<()>>;

/// A change asked of one server's connection task.
struct Control {
    op: Op,
    names: Vec<Vec<u8>>,
    reply: Option<Reply>,
    /// Channels moving here from another server (the reason for the `Lost`).
    adopt: Option<String>,
}

impl Control {
    /// `op` on one channel or pattern, nothing adopted.
    fn one(op: Op, name: &[u8], reply: Option<Reply>) -> Control {
        Control {
            op,
            names: vec![name.to_vec()],
            reply,
            adopt: None,
        }
    }
}

/// What the handle and the ownership watcher share: one configuration's
/// connection tasks and the subscriptions made on them.
struct Shared {
    core: Arc<Topology>,
    controls: Vec<mpsc::UnboundedSender<Control>>,
    names: Vec<String>,
    /// Each subscribed channel and the server it is subscribed on. Held
    /// while a subscription is recorded and sent, and by a move to the
    /// client's next configuration (see [`follow_client`]).
    channels: Mutex<BTreeMap<Vec<u8>, usize>>,
    /// Every pattern subscribed (on every server).
    patterns: Mutex<BTreeSet<Vec<u8>>>,
    /// Replaced by the next configuration's: a caller that finds this
    /// (under the `channels` lock) starts again on the new one.
    retired: std::sync::atomic::AtomicBool,
    confirm_timeout: Duration,
    connect_timeout: Duration,
}

fn ended() -> redis::RedisError {
    client_error("the subscriber was dropped (its connection tasks ended)".to_string())
}

impl Shared {
    fn send(&self, server: usize, control: Control) -> RedisResult<()> {
        self.controls
            .get(server)
            .ok_or_else(|| client_error(format!("no server {server}")))?
            .send(control)
            .map_err(|_| ended())
    }

    fn owner(&self, channel: &[u8]) -> usize {
        self.core.owner(channel).0.min(self.controls.len().saturating_sub(1))
    }

    /// Waits for the confirmations of `waits` (server, answer) under one
    /// deadline. A refusal by a server is returned as is; no answer in time
    /// gives an error saying what is recorded.
    async fn confirm(
        &self,
        op: Op,
        name: &[u8],
        waits: Vec<(usize, oneshot::Receiver<RedisResult<()>>)>,
    ) -> RedisResult<()> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut left: BTreeSet<usize> = waits.iter().map(|(s, _)| *s).collect();
        let mut pending: FuturesUnordered<_> = waits.into_iter().map(|(s, rx)| rx.map(move |r| (s, r))).collect();
        loop {
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(None) => return Ok(()),
                Ok(Some((s, Ok(Ok(()))))) => {
                    left.remove(&s);
                }
                Ok(Some((_, Ok(Err(e))))) => return Err(e),
                Ok(Some((_, Err(_)))) => return Err(ended()),
                Err(_) => break,
            }
        }
        let on: Vec<&str> = left
            .iter()
            .filter_map(|&s| self.names.get(s).map(String::as_str))
            .collect();
        let done = if op.adds() {
            "it is recorded and will be subscribed when the server answers"
        } else {
            "it is forgotten here; the server drops it when it answers"
        };
        Err(client_error(format!(
            "{} {}: not confirmed by {} within {:?}; {done}",
            op.name(),
            crate::error::show_key(name),
            on.join(", "),
            self.confirm_timeout
        )))
    }
}

/// A handle to change a subscriber's subscriptions from any task while
/// another one consumes its events ([`AsyncSubscriber::subscriptions`]). Cheap
/// to clone. Its calls fail once the subscriber is dropped.
#[derive(Clone)]
pub struct Subscriptions {
    state: Arc<arc_swap::ArcSwap<Shared>>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.state.load();
        f.debug_struct("Subscriptions")
            .field("servers", &shared.names)
            .field("channels", &lock(&shared.channels).len())
            .finish()
    }
}

fn one_arg<T: ToRedisArgs>(what: &str, value: T) -> RedisResult<Vec<u8>> {
    let mut args = value.to_redis_args();
    if args.len() != 1 {
        return Err(client_error(format!("{what} must be one argument, got {}", args.len())));
    }
    Ok(args.pop().unwrap_or_default())
}

impl Subscriptions {
    /// Runs `f` on the configuration in force with its channels locked
    /// (the lock orders it with a move to the next configuration, which
    /// copies the channels and patterns); a configuration retired
    /// meanwhile is passed over for the next.
    fn locked<R>(
        &self,
        f: impl FnOnce(&Shared, &mut BTreeMap<Vec<u8>, usize>) -> RedisResult<R>,
    ) -> RedisResult<(Arc<Shared>, R)> {
        loop {
            let shared = self.state.load_full();
            let mut map = lock(&shared.channels);
            if shared.retired.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let result = f(&shared, &mut map);
            drop(map);
            return result.map(|r| (shared, r));
        }
    }

    /// SUBSCRIBEs `channel` on the server that owns it (where `publish`
    /// sends). The channel is recorded first and stays subscribed across
    /// reconnections; the call waits at most
    /// [`SubscriberOptions::confirm_timeout`] for the server's
    /// confirmation. Without it (the server is down, stopped or slow), the
    /// error says so: the subscription is made as soon as the server
    /// answers (if its connection was lost, the [`Event::Resubscribed`] of
    /// that server says when).
    pub async fn subscribe<C: ToRedisArgs>(&self, channel: C) -> RedisResult<()> {
        let channel = one_arg("channel", channel)?;
        let (tx, rx) = oneshot::channel();
        let (shared, server) = self.locked(|shared, map| {
            let server = shared.owner(&channel);
            if let Some(old) = map.insert(channel.clone(), server)
                && old != server
            {
                shared.send(old, Control::one(Op::Unsubscribe, &channel, None))?;
            }
            shared.send(server, Control::one(Op::Subscribe, &channel, Some(tx)))?;
            Ok(server)
        })?;
        shared.confirm(Op::Subscribe, &channel, vec![(server, rx)]).await
    }

    /// UNSUBSCRIBEs `channel` (forgotten at once; waits for the
    /// confirmation as `subscribe` does, until which messages of the
    /// channel may still arrive).
    pub async fn unsubscribe<C: ToRedisArgs>(&self, channel: C) -> RedisResult<()> {
        let channel = one_arg("channel", channel)?;
        let (tx, rx) = oneshot::channel();
        let (shared, server) = self.locked(|shared, map| {
            let server = map.remove(&channel).unwrap_or_else(|| shared.owner(&channel));
            shared.send(server, Control::one(Op::Unsubscribe, &channel, Some(tx)))?;
            Ok(server)
        })?;
        shared.confirm(Op::Unsubscribe, &channel, vec![(server, rx)]).await
    }

    /// PSUBSCRIBEs `pattern` on every server (recorded on each, then waits
    /// for all confirmations under one `confirm_timeout`).
    pub async fn psubscribe<P: ToRedisArgs>(&self, pattern: P) -> RedisResult<()> {
        let pattern = one_arg("pattern", pattern)?;
        self.everywhere(Op::PSubscribe, pattern).await
    }

    /// PUNSUBSCRIBEs `pattern` on every server.
    pub async fn punsubscribe<P: ToRedisArgs>(&self, pattern: P) -> RedisResult<()> {
        let pattern = one_arg("pattern", pattern)?;
        self.everywhere(Op::PUnsubscribe, pattern).await
    }

    async fn everywhere(&self, op: Op, pattern: Vec<u8>) -> RedisResult<()> {
        let (shared, waits) = self.locked(|shared, _| {
            if op.adds() {
                lock(&shared.patterns).insert(pattern.clone());
            } else {
                lock(&shared.patterns).remove(&pattern);
            }
            let mut waits = Vec::new();
            for server in 0..shared.controls.len() {
                let (tx, rx) = oneshot::channel();
                shared.send(server, Control::one(op, &pattern, Some(tx)))?;
                waits.push((server, rx));
            }
            Ok(waits)
        })?;
        shared.confirm(op, &pattern, waits).await
    }
}

/// A subscriber over every server of a client (async; for the sync client
/// see [`MRedis::subscriber`](crate::MRedis::subscriber)). A
/// `futures::Stream` of [`Event`]s. Dropping it closes its connections.
pub struct AsyncSubscriber {
    handle: Subscriptions,
    buffer: Arc<Buffer>,
    /// The connection tasks of the configuration in force.
    tasks: Arc<Mutex<Generation>>,
    /// Follows the client's reconfigurations (see [`follow_client`]).
    follower: Option<tokio::task::JoinHandle<()>>,
}

/// One configuration's tasks: one per server (in `Shared::controls`
/// order), the health placement follower if any, and what keeps the
/// configuration's Sentinel watching and health checking running.
struct Generation {
    servers: Vec<tokio::task::JoinHandle<()>>,
    health: Option<tokio::task::JoinHandle<()>>,
    _running: Arc<Running>,
}

impl Generation {
    fn abort(&mut self) {
        for t in self.servers.iter().chain(&self.health) {
            t.abort();
        }
    }
}

impl std::fmt::Debug for AsyncSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSubscriber")
            .field("servers", &self.handle.state.load().controls.len())
            .field("buffered", &self.buffer.backlog())
            .field("dropped", &self.buffer.dropped())
            .finish()
    }
}

impl Drop for AsyncSubscriber {
    fn drop(&mut self) {
        if let Some(f) = &self.follower {
            f.abort();
        }
        lock(&self.tasks).abort();
    }
}

impl crate::MRedis {
    /// A subscriber with [`SubscriberOptions`] (buffer bounds, confirmation
    /// and connection timeouts); [`MRedis::subscriber`](crate::MRedis::subscriber)
    /// uses the defaults with the client's connect and response timeouts.
    /// See [`pubsub`](crate::pubsub).
    pub fn subscriber_with(&self, options: SubscriberOptions) -> RedisResult<crate::Subscriber> {
        Subscriber::start_with(self.fleet().running(), options, Some(self.topology()))
    }
}

impl crate::async_client::MRedis {
    /// A subscriber with [`SubscriberOptions`] (buffer bounds, confirmation
    /// and connection timeouts), on the current tokio runtime;
    /// [`aio::MRedis::subscriber`](crate::aio::MRedis::subscriber) uses the
    /// defaults with the client's connect and response timeouts. See
    /// [`pubsub`](crate::pubsub).
    pub fn subscriber_with(&self, options: SubscriberOptions) -> RedisResult<AsyncSubscriber> {
        AsyncSubscriber::start_with(self.fleet().running(), options, Some(self.topology()))
    }
}

impl AsyncSubscriber {
    /// Starts one connection task per server (on the current tokio
    /// runtime); with `follow`, the client's configurations to follow.
    pub(crate) fn start(running: Arc<Running>, follow: Option<Topologies>) -> RedisResult<AsyncSubscriber> {
        let options = SubscriberOptions::of_client(&running);
        AsyncSubscriber::start_with(running, options, follow)
    }

    pub(crate) fn start_with(
        running: Arc<Running>,
        options: SubscriberOptions,
        follow: Option<Topologies>,
    ) -> RedisResult<AsyncSubscriber> {
        let buffer = Arc::new(Buffer::new(&options));
        let (shared, generation) =
            spawn_generation(running, &buffer, None, options.connect_timeout, options.confirm_timeout);
        let state = Arc::new(arc_swap::ArcSwap::new(shared));
        let tasks = Arc::new(Mutex::new(generation));
        let follower = follow.map(|mut topologies| {
            topologies.borrow_and_update();
            tokio::spawn(follow_client(state.clone(), tasks.clone(), buffer.clone(), topologies))
        });
        Ok(AsyncSubscriber {
            handle: Subscriptions { state },
            buffer,
            tasks,
            follower,
        })
    }

    /// A handle to subscribe and unsubscribe from other tasks while this
    /// one is consumed (its methods take `&self`).
    pub fn subscriptions(&self) -> Subscriptions {
        self.handle.clone()
    }

    /// See [`Subscriptions::subscribe`]: recorded at once, confirmed within
    /// [`SubscriberOptions::confirm_timeout`] or an error saying it is
    /// recorded. The other servers' messages keep arriving in the buffer
    /// meanwhile.
    pub async fn subscribe<C: ToRedisArgs>(&self, channel: C) -> RedisResult<()> {
        self.handle.subscribe(channel).await
    }

    /// See [`Subscriptions::unsubscribe`].
    pub async fn unsubscribe<C: ToRedisArgs>(&self, channel: C) -> RedisResult<()> {
        self.handle.unsubscribe(channel).await
    }

    /// PSUBSCRIBEs `pattern` on every server (see [`Subscriptions::psubscribe`]).
    pub async fn psubscribe<P: ToRedisArgs>(&self, pattern: P) -> RedisResult<()> {
        self.handle.psubscribe(pattern).await
    }

    /// PUNSUBSCRIBEs `pattern` on every server.
    pub async fn punsubscribe<P: ToRedisArgs>(&self, pattern: P) -> RedisResult<()> {
        self.handle.punsubscribe(pattern).await
    }

    /// The next event, waiting for it.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.next().await
    }

    /// The next event if one has arrived.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.buffer.pop(None)
    }

    /// What waits in the buffer now (bounded by
    /// [`SubscriberOptions::max_messages`] and `max_bytes`).
    pub fn backlog(&self) -> Backlog {
        self.buffer.backlog()
    }

    /// How many messages were dropped because the buffer was full, since
    /// the start (each also reported by an [`Event::Dropped`]).
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped()
    }
}

impl futures::Stream for AsyncSubscriber {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match self.buffer.pop(Some(cx.waker())) {
            Some(e) => Poll::Ready(Some(e)),
            None => Poll::Pending,
        }
    }
}

/// One server's connection.
struct Link {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    gate: Option<Arc<Gate>>,
}

/// Connects and hands the socket to redis-rs through a gate (TCP and Unix
/// sockets; a TLS connection is made by redis-rs itself, ungated).
async fn connect(
    server: crate::server::Server,
    timeout: Duration,
    name: Option<String>,
    counts: Arc<crate::connect::Counts>,
) -> RedisResult<Link> {
    let attempt = async {
        // The current address: a Sentinel shard's primary of now.
        let info = server.current_info()?;
        // Named, the handshake is this module's (redis-rs's subscriber
        // cannot send CLIENT SETNAME); unnamed (or if that handshake is
        // refused) redis-rs's, whose errors are the usual ones.
        if let Some(name) = name.as_deref() {
            match connect_named(&info, name, &counts).await {
                Ok(Some(link)) => return Ok(link),
                Ok(None) => {}
                Err(e) if e.kind() == redis::ErrorKind::Io => return Err(e),
                Err(_) => {}
            }
        }
        let client = server.client()?;
        let gate = Arc::new(Gate::default());
        let pubsub = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                counts.note(crate::connect::Kind::Subscriber);
                let tcp = crate::connect::tcp(host, *port).await?;
                Some(
                    redis::aio::PubSub::new(
                        info.redis_settings(),
                        Gated {
                            inner: tcp,
                            gate: gate.clone(),
                        },
                    )
                    .await?,
                )
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                counts.note(crate::connect::Kind::Subscriber);
                let unix = crate::connect::unix(path).await?;
                Some(
                    redis::aio::PubSub::new(
                        info.redis_settings(),
                        Gated {
                            inner: unix,
                            gate: gate.clone(),
                        },
                    )
                    .await?,
                )
            }
            _ => None,
        };
        let (pubsub, gate) = match pubsub {
            Some(p) => {
                gate.arm();
                (p, Some(gate))
            }
            None => (
                crate::connect::redis_rs_pubsub(&client, crate::connect::Kind::Subscriber, &counts).await?,
                None,
            ),
        };
        let (sink, stream) = pubsub.split();
        Ok::<Link, redis::RedisError>(Link { sink, stream, gate })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(|e| crate::error::name_server(&server, e)),
        Err(_) => Err(crate::error::name_server(
            &server,
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection and handshake within {timeout:?}"),
            )),
        )),
    }
}

/// Opens a subscriber connection that names itself: `AUTH` and
/// `CLIENT SETNAME` are sent on the socket before redis-rs's subscriber
/// takes it over (with no password left to send). `None` for addresses
/// it does not handle (TLS); an error reply (wrong password, a user
/// without `client|setname`) is a non-I/O error, and the caller connects
/// again the usual way.
async fn connect_named(
    info: &redis::ConnectionInfo,
    name: &str,
    counts: &crate::connect::Counts,
) -> RedisResult<Option<Link>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        stream: &mut S,
        info: &redis::RedisConnectionInfo,
        name: &str,
        counts: &crate::connect::Counts,
    ) -> RedisResult<()> {
        let pipe = crate::connect::handshake(info, crate::connect::Kind::Subscriber, name, counts);
        let replies = pipe.len();
        stream.write_all(&pipe.get_packed_pipeline()).await?;
        // Both replies are simple strings or errors: one line each.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        let mut lines = 0;
        while lines < replies {
            if stream.read(&mut byte).await? == 0 {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the handshake",
                )));
            }
            buf.push(byte[0]);
            if buf.ends_with(b"\r\n") {
                lines += 1;
                if buf.first() != Some(&b'+') {
                    return Err(crate::error::client_error(
                        "the server refused the subscriber's handshake".to_string(),
                    ));
                }
                buf.clear();
            }
        }
        Ok(())
    }
    let settings = info.redis_settings();
    let plain = redis::RedisConnectionInfo::default().set_protocol(settings.protocol());
    let gate = Arc::new(Gate::default());
    let pubsub = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let mut tcp = crate::connect::tcp(host, *port).await?;
            handshake(&mut tcp, settings, name, counts).await?;
            redis::aio::PubSub::new(
                &plain,
                Gated {
                    inner: tcp,
                    gate: gate.clone(),
                },
            )
            .await?
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let mut unix = crate::connect::unix(path).await?;
            handshake(&mut unix, settings, name, counts).await?;
            redis::aio::PubSub::new(
                &plain,
                Gated {
                    inner: unix,
                    gate: gate.clone(),
                },
            )
            .await?
        }
        _ => return Ok(None),
    };
    gate.arm();
    let (sink, stream) = pubsub.split();
    Ok(Some(Link {
        sink,
        stream,
        gate: Some(gate),
    }))
}

/// What a finished command was.
enum Done {
    /// The resubscription of everything after a (re)connection.
    Restore,
    /// Channels moving here from another server.
    Adopt,
    /// A caller's change.
    Command(Option<Reply>, Op, Vec<Vec<u8>>),
}

type Pending = FuturesUnordered<BoxFuture<'static, (u64, Done, RedisResult<()>)>>;

/// One server's connection task's state.
struct Task {
    server: crate::server::Server,
    name: Arc<str>,
    /// The shard's address epoch the connection is for (a failover
    /// changes it: the subscriptions move to the new primary).
    epoch: u64,
    buffer: Arc<Buffer>,
    connect_timeout: Duration,
    /// The connection name (`CLIENT SETNAME`), if naming is on.
    client_name: Option<String>,
    /// The client's count of connections opened.
    counts: Arc<crate::connect::Counts>,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    link: Option<Link>,
    /// Counts connections, so a late answer from an old one changes nothing.
    generation: u64,
    /// Since when some subscriptions are not in place (a `Lost` was sent).
    lost_at: Option<Instant>,
    /// Restore and adopt commands of this connection not yet confirmed.
    outstanding: usize,
    /// The resubscription of this connection is confirmed.
    restored: bool,
    /// Callers whose subscriptions wait for the connection.
    waiting: Vec<Reply>,
    backoff: Duration,
    /// Health checking's placement, when there is health checking.
    following: Option<Arc<Following>>,
}

impl Task {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<redis::Msg>> {
        let Some(link) = self.link.as_mut() else {
            return Poll::Pending;
        };
        match link.stream.poll_next_unpin(cx) {
            Poll::Ready(m) => Poll::Ready(m),
            Poll::Pending => {
                if let Some(g) = &link.gate {
                    g.drained(cx.waker());
                }
                Poll::Pending
            }
        }
    }

    fn lost(&mut self, reason: String) {
        if self.lost_at.is_none() {
            self.lost_at = Some(Instant::now());
            self.buffer.push_event(Event::Lost {
                server: self.name.to_string(),
                reason,
            });
        }
    }

    fn check_resubscribed(&mut self) {
        if self.link.is_some()
            && self.restored
            && self.outstanding == 0
            // Not while the placement changed and the watcher has not moved
            // the channels yet: the gap is not closed.
            && self.following.as_ref().is_none_or(|f| f.current())
            && let Some(at) = self.lost_at.take()
        {
            self.buffer.push_event(Event::Resubscribed {
                server: self.name.to_string(),
                after: at.elapsed(),
            });
        }
    }

    fn connected(&mut self, link: Link, pending: &mut Pending) {
        self.generation += 1;
        self.backoff = Duration::from_millis(50);
        self.restored = false;
        self.outstanding = 1;
        let mut sink = link.sink.clone();
        self.link = Some(link);
        let channels: Vec<Vec<u8>> = self.channels.iter().cloned().collect();
        let patterns: Vec<Vec<u8>> = self.patterns.iter().cloned().collect();
        let generation = self.generation;
        pending.push(
            async move {
                let mut r = Ok(());
                if !channels.is_empty() {
                    r = sink.subscribe(channels).await;
                }
                if r.is_ok() && !patterns.is_empty() {
                    r = sink.psubscribe(patterns).await;
                }
                (generation, Done::Restore, r)
            }
            .boxed(),
        );
    }

    fn disconnected(&mut self, reason: String) {
        self.link = None;
        self.restored = false;
        self.outstanding = 0;
        self.lost(reason);
    }

    fn control(&mut self, c: Control, pending: &mut Pending) {
        let Control {
            op,
            names,
            reply,
            adopt,
        } = c;
        if op == Op::Recheck {
            self.check_resubscribed();
            return;
        }
        for n in &names {
            match op {
                Op::Subscribe => self.channels.insert(n.clone()),
                Op::Unsubscribe => self.channels.remove(n),
                Op::PSubscribe => self.patterns.insert(n.clone()),
                Op::PUnsubscribe => self.patterns.remove(n),
                Op::Recheck => false,
            };
        }
        if let Some(reason) = adopt.clone() {
            self.lost(reason);
        }
        let Some(link) = &self.link else {
            match reply {
                // Made on (re)connection.
                Some(r) if op.adds() => self.waiting.push(r),
                // Nothing is subscribed without a connection.
                Some(r) => {
                    let _ = r.send(Ok(()));
                }
                None => {}
            }
            return;
        };
        let done = if adopt.is_some() {
            self.outstanding += 1;
            Done::Adopt
        } else {
            Done::Command(reply, op, names.clone())
        };
        let mut sink = link.sink.clone();
        let generation = self.generation;
        pending.push(
            async move {
                let r = match op {
                    Op::Subscribe => sink.subscribe(names).await,
                    Op::Unsubscribe => sink.unsubscribe(names).await,
                    Op::PSubscribe => sink.psubscribe(names).await,
                    Op::PUnsubscribe | Op::Recheck => sink.punsubscribe(names).await,
                };
                (generation, done, r)
            }
            .boxed(),
        );
    }

    /// A command finished; `Some(reason)` if the connection must be dropped.
    fn finished(&mut self, generation: u64, done: Done, r: RedisResult<()>) -> Option<String> {
        let current = generation == self.generation && self.link.is_some();
        match r {
            Ok(()) => {
                match done {
                    Done::Restore if current => {
                        self.restored = true;
                        for w in self.waiting.drain(..) {
                            let _ = w.send(Ok(()));
                        }
                        self.outstanding = self.outstanding.saturating_sub(1);
                    }
                    Done::Adopt if current => self.outstanding = self.outstanding.saturating_sub(1),
                    Done::Command(Some(reply), ..) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
                if current {
                    self.check_resubscribed();
                }
                None
            }
            // The server refused (an ACL, say): not a connection problem.
            Err(e) if e.code().is_some() => {
                let e = crate::error::name_server(&self.server, e);
                match done {
                    Done::Command(reply, op, names) => {
                        if op.adds() {
                            for n in &names {
                                match op {
                                    Op::Subscribe => self.channels.remove(n),
                                    _ => self.patterns.remove(n),
                                };
                            }
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(e));
                        }
                        None
                    }
                    _ if current => Some(format!("the resubscription was refused: {e}")),
                    _ => None,
                }
            }
            // The connection broke: what was asked stays recorded and is
            // made on the next connection.
            Err(e) => {
                match done {
                    Done::Command(Some(reply), op, _) if op.adds() => self.waiting.push(reply),
                    Done::Command(Some(reply), ..) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
                current.then(|| format!("the connection failed: {}", crate::error::name_server(&self.server, e)))
            }
        }
    }
}

/// One server's connection task: keeps the subscriptions, forwards
/// messages into the buffer, reconnects and subscribes again after a loss.
/// Never waits on the server: commands are answered by futures of their
/// own, so a stopped server stalls nothing but itself.
async fn serve(mut t: Task, mut control: mpsc::UnboundedReceiver<Control>) {
    let mut pending: Pending = FuturesUnordered::new();
    let mut connecting: Option<BoxFuture<'static, RedisResult<Link>>> = Some(
        connect(
            t.server.clone(),
            t.connect_timeout,
            t.client_name.clone(),
            t.counts.clone(),
        )
        .boxed(),
    );
    let mut retry: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let shard = t.server.shard().is_some();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut reconnect = None;
        tokio::select! {
            // A shard's failover: the subscriptions move to the new primary
            // (the gap is reported as for any reconnection).
            _ = tick.tick(), if shard => {
                let now = t.server.epoch();
                if now != t.epoch {
                    t.epoch = now;
                    if t.link.is_some() || connecting.is_some() {
                        connecting = None;
                        reconnect = Some("the shard failed over to a new primary".to_string());
                    }
                }
            }
            c = control.recv() => {
                let Some(c) = c else { return };
                t.control(c, &mut pending);
            }
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match r {
                    Ok(link) => t.connected(link, &mut pending),
                    Err(e) => reconnect = Some(format!("cannot connect: {e}")),
                }
            }
            _ = async { retry.as_mut().expect("guarded").await }, if retry.is_some() => {
                retry = None;
                connecting = Some(connect(
            t.server.clone(),
            t.connect_timeout,
            t.client_name.clone(),
            t.counts.clone(),
        )
        .boxed());
            }
            m = std::future::poll_fn(|cx| t.poll_message(cx)), if t.link.is_some() => match m {
                Some(m) => {
                    let message = Message {
                        server: t.name.clone(),
                        channel: m.get_channel().unwrap_or_default(),
                        pattern: if m.from_pattern() { m.get_pattern().ok() } else { None },
                        payload: m.get_payload_bytes().to_vec(),
                    };
                    t.buffer.push_message(message);
                }
                None => reconnect = Some("the connection closed (server restarted or unreachable)".to_string()),
            },
            Some((generation, done, r)) = pending.next(), if !pending.is_empty() => {
                reconnect = t.finished(generation, done, r);
            }
        }
        if let Some(reason) = reconnect {
            t.disconnected(reason);
            retry = Some(Box::pin(tokio::time::sleep(t.backoff)));
            t.backoff = (t.backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// The client's configurations, as [`reconfigure`](crate::MRedis::reconfigure) publishes them.
pub(crate) type Topologies = tokio::sync::watch::Receiver<Arc<Running>>;

/// The connection tasks of one configuration: a new task per server, or,
/// for a server that stays from `keep` (the same connection, see
/// [`Server::same_connection`](crate::server::Server)), its task as it is
/// (its connection and subscriptions untouched). The kept tasks' handles
/// are taken out of `keep`.
fn spawn_generation(
    running: Arc<Running>,
    buffer: &Arc<Buffer>,
    mut keep: Option<(&Shared, &mut Generation)>,
    connect_timeout: Duration,
    confirm_timeout: Duration,
) -> (Arc<Shared>, Generation) {
    let core = running.core.clone();
    let following = core.health.clone().map(|health| {
        Arc::new(Following {
            seen: Mutex::new(health.placed_on()),
            health,
        })
    });
    let mut controls = Vec::new();
    let mut names = Vec::new();
    let mut servers = Vec::new();
    for server in core.current_servers() {
        names.push(server.name().to_string());
        let kept = keep.as_mut().and_then(|(old, generation)| {
            let i = (0..old.controls.len()).find(|&i| {
                old.core.servers.get(i).is_some_and(|s| s.same_connection(server)) && generation.servers.len() > i
            })?;
            // A placeholder that is never run, in the retired generation.
            let handle = std::mem::replace(&mut generation.servers[i], tokio::spawn(async {}));
            Some((old.controls[i].clone(), handle))
        });
        if let Some((control, handle)) = kept {
            controls.push(control);
            servers.push(handle);
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        controls.push(tx);
        let task = Task {
            server: server.clone(),
            name: Arc::from(server.name()),
            epoch: server.epoch(),
            buffer: buffer.clone(),
            connect_timeout,
            // Not the configuration's name: a subscribed connection cannot
            // be renamed, and it is kept across a reconfigure (it follows
            // by itself, touching no key).
            client_name: crate::connect::name_of(crate::connect::Kind::Subscriber, core.client_name.as_deref()),
            counts: core.lineage.opened.clone(),
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            link: None,
            generation: 0,
            lost_at: None,
            outstanding: 0,
            restored: false,
            waiting: Vec::new(),
            backoff: Duration::from_millis(50),
            following: following.clone(),
        };
        servers.push(tokio::spawn(serve(task, rx)));
    }
    let shared = Arc::new(Shared {
        core,
        controls,
        names,
        channels: Mutex::new(BTreeMap::new()),
        patterns: Mutex::new(BTreeSet::new()),
        retired: std::sync::atomic::AtomicBool::new(false),
        confirm_timeout,
        connect_timeout,
    });
    let health = following.map(|following| tokio::spawn(follow(shared.clone(), following)));
    (
        shared,
        Generation {
            servers,
            health,
            _running: running,
        },
    )
}

/// Follows the client's reconfigurations: for each new configuration, the
/// connections to servers that stay are kept as they are, new servers get
/// connections of their own, every channel whose owner changed is
/// subscribed on its new owner (which reports the gap with an
/// [`Event::Lost`] and its [`Event::Resubscribed`]) and unsubscribed on
/// its old one, patterns are subscribed on the new servers, and the
/// connections to servers that left are closed once those moves are
/// confirmed (or the confirmation timeout passed).
async fn follow_client(
    state: Arc<arc_swap::ArcSwap<Shared>>,
    tasks: Arc<Mutex<Generation>>,
    buffer: Arc<Buffer>,
    mut topologies: Topologies,
) {
    while topologies.changed().await.is_ok() {
        let running = topologies.borrow_and_update().clone();
        let old = state.load_full();
        let (mut retired, waits) = {
            let map = lock(&old.channels);
            let mut generation = lock(&tasks);
            let (new, next) = spawn_generation(
                running,
                &buffer,
                Some((&old, &mut generation)),
                old.connect_timeout,
                old.confirm_timeout,
            );
            // The old index of each kept control, by channel identity.
            let old_index_of = |new_index: usize| {
                (0..old.controls.len()).find(|&i| old.controls[i].same_channel(&new.controls[new_index]))
            };
            let mut moves: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
            let mut leaving: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
            {
                let mut new_map = lock(&new.channels);
                for (channel, &on) in map.iter() {
                    let owner = new.owner(channel);
                    new_map.insert(channel.clone(), owner);
                    if old_index_of(owner) != Some(on) {
                        moves.entry(owner).or_default().push(channel.clone());
                        leaving.entry(on).or_default().push(channel.clone());
                    }
                }
            }
            let patterns = lock(&old.patterns).clone();
            *lock(&new.patterns) = patterns.clone();
            let mut waits = Vec::new();
            for (owner, names) in moves {
                let (tx, rx) = oneshot::channel();
                let reason = format!(
                    "{} channel(s) move here (the client was reconfigured); their messages published meanwhile are \
                     missed",
                    names.len()
                );
                let _ = new.send(
                    owner,
                    Control {
                        op: Op::Subscribe,
                        names,
                        reply: Some(tx),
                        adopt: Some(reason),
                    },
                );
                waits.push(rx);
            }
            for i in 0..new.controls.len() {
                if old_index_of(i).is_none() && !patterns.is_empty() {
                    let (tx, rx) = oneshot::channel();
                    let _ = new.send(
                        i,
                        Control {
                            op: Op::PSubscribe,
                            names: patterns.iter().cloned().collect(),
                            reply: Some(tx),
                            adopt: None,
                        },
                    );
                    waits.push(rx);
                }
            }
            // The kept connections that lose channels unsubscribe them.
            let kept_old: BTreeSet<usize> = (0..new.controls.len()).filter_map(old_index_of).collect();
            for (on, names) in leaving {
                if kept_old.contains(&on) {
                    let _ = old.send(
                        on,
                        Control {
                            op: Op::Unsubscribe,
                            names,
                            reply: None,
                            adopt: None,
                        },
                    );
                }
            }
            old.retired.store(true, std::sync::atomic::Ordering::Release);
            state.store(new);
            (std::mem::replace(&mut *generation, next), waits)
        };
        // The servers that left keep serving their channels until the
        // moved ones are confirmed where they went.
        let confirm_timeout = old.confirm_timeout;
        let _ = tokio::time::timeout(confirm_timeout, futures::future::join_all(waits)).await;
        retired.abort();
    }
}

/// Follows health checking's placement: when it changes, each channel
/// whose owner changed is unsubscribed where it was and subscribed where
/// `PUBLISH` now sends it (the new server reports the gap).
async fn follow(shared: Arc<Shared>, following: Arc<Following>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = following.health.placed_on();
        if now != *lock(&following.seen) {
            reassign(&shared);
            *lock(&following.seen) = now;
            for server in 0..shared.controls.len() {
                let _ = shared.send(
                    server,
                    Control {
                        op: Op::Recheck,
                        names: Vec::new(),
                        reply: None,
                        adopt: None,
                    },
                );
            }
        }
    }
}

/// Health checking's placement as the watcher last applied it.
struct Following {
    health: Arc<crate::health::Health>,
    seen: Mutex<Option<Vec<usize>>>,
}

impl Following {
    /// The subscriptions were moved for the placement in force.
    fn current(&self) -> bool {
        self.health.placed_on() == *lock(&self.seen)
    }
}

fn reassign(shared: &Shared) {
    let mut map = lock(&shared.channels);
    let mut moves: BTreeMap<(usize, usize), Vec<Vec<u8>>> = BTreeMap::new();
    for (channel, on) in map.iter_mut() {
        let owner = shared.owner(channel);
        if owner != *on {
            moves.entry((*on, owner)).or_default().push(channel.clone());
            *on = owner;
        }
    }
    for ((from, to), names) in moves {
        let reason = format!(
            "{} channel(s) move here from {} (health checking changed the placement); their messages published \
             meanwhile are missed",
            names.len(),
            shared.names.get(from).map(String::as_str).unwrap_or("?")
        );
        let _ = shared.send(
            from,
            Control {
                op: Op::Unsubscribe,
                names: names.clone(),
                reply: None,
                adopt: None,
            },
        );
        let _ = shared.send(
            to,
            Control {
                op: Op::Subscribe,
                names,
                reply: None,
                adopt: Some(reason),
            },
        );
    }
}

/// The sync subscriber: the same, carried by a small runtime of its own;
/// an iterator of [`Event`]s. Made by
/// [`MRedis::subscriber`](crate::MRedis::subscriber) or
/// [`MRedis::subscriber_with`](crate::MRedis::subscriber_with). Its
/// connections keep reading (into the bounded buffer) while a call waits.
pub struct Subscriber {
    runtime: tokio::runtime::Runtime,
    inner: AsyncSubscriber,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("inner", &self.inner).finish()
    }
}

impl Subscriber {
    pub(crate) fn start(running: Arc<Running>, follow: Option<Topologies>) -> RedisResult<Subscriber> {
        let options = SubscriberOptions::of_client(&running);
        Subscriber::start_with(running, options, follow)
    }

    pub(crate) fn start_with(
        running: Arc<Running>,
        options: SubscriberOptions,
        follow: Option<Topologies>,
    ) -> RedisResult<Subscriber> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mredis-subscriber")
            .enable_all()
            .build()
            .map_err(|e| client_error(format!("cannot start the subscriber's runtime: {e}")))?;
        let inner = {
            let _guard = runtime.enter();
            AsyncSubscriber::start_with(running, options, follow)?
        };
        Ok(Subscriber { runtime, inner })
    }

    /// SUBSCRIBEs `channel` on the server that owns it: recorded at once,
    /// confirmed within [`SubscriberOptions::confirm_timeout`] or an error
    /// saying it is recorded (see [`Subscriptions::subscribe`]).
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

    /// The next event if one has arrived.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.inner.try_next_event()
    }

    /// What waits in the buffer now.
    pub fn backlog(&self) -> Backlog {
        self.inner.backlog()
    }

    /// How many messages were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

impl Iterator for Subscriber {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event(None)
    }
}

/// The sync client's subscribers.
impl crate::MRedis {
    /// A subscriber over every server: channels on their owner server,
    /// patterns on all, one iterator of [`Event`](crate::Event)s; it
    /// reconnects and subscribes again by itself. See
    /// [`pubsub`](crate::pubsub). Runs its connections on a small runtime of
    /// its own. It follows [`reconfigure`](Self::reconfigure) (see
    /// [`pubsub`](crate::pubsub), "After a reconfiguration").
    pub fn subscriber(&self) -> RedisResult<Subscriber> {
        Subscriber::start(self.fleet().running(), Some(self.topology()))
    }
}

/// The async client's subscribers.
impl crate::async_client::MRedis {
    /// A subscriber over every server: channels on their owner server,
    /// patterns on all, one stream of events; it reconnects and subscribes
    /// again by itself. See [`pubsub`](crate::pubsub). Needs a tokio runtime.
    /// It follows [`reconfigure`](Self::reconfigure) (see
    /// [`pubsub`](crate::pubsub), "After a reconfiguration").
    pub fn subscriber(&self) -> RedisResult<AsyncSubscriber> {
        AsyncSubscriber::start(self.fleet().running(), Some(self.topology()))
    }
}
