//! The async client's shared connection to one server: a redis-rs
//! `MultiplexedConnection`, opened on first use and opened again after the
//! server closed it, that names itself (`CLIENT SETNAME`) every time it is
//! opened. (redis-rs's `ConnectionManager` does the reconnecting but has no
//! way to run a command on each new connection.)
//!
//! A request that fails because the connection broke (end of file, reset,
//! broken pipe: redis-rs's "unrecoverable" errors) drops it; the next
//! request opens a new one. Opening is tried `1 + retries` times, 10 ms
//! apart doubling, each within the connect timeout; concurrent requests
//! wait for the same attempt.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A shared, self-reopening, named multiplexed connection. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Inner>);

struct Inner {
    client: redis::Client,
    config: AsyncConnectionConfig,
    retries: usize,
    /// The name given to each new connection.
    name: RwLock<Option<String>>,
    /// The open connection and its generation (bumped at every open).
    slot: RwLock<(u64, Option<MultiplexedConnection>)>,
    /// Held while opening, so one attempt serves every waiting request.
    opening: tokio::sync::Mutex<()>,
    db: i64,
    /// The client's, which counts the connections opened.
    lineage: Arc<crate::routing::Lineage>,
}

impl Shared {
    /// A connection to `client`'s server, opened on first use.
    pub(crate) fn new_lazy(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Option<Duration>,
        retries: usize,
        name: Option<String>,
        lineage: Arc<crate::routing::Lineage>,
    ) -> Shared {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(response_timeout);
        let db = client.get_connection_info().redis_settings().db();
        Shared(Arc::new(Inner {
            client,
            config,
            retries,
            name: RwLock::new(name),
            slot: RwLock::new((0, None)),
            opening: tokio::sync::Mutex::new(()),
            db,
            lineage,
        }))
    }

    /// The open connection (and its generation), opening one if needed.
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let _opening = self.0.opening.lock().await;
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let con = self.open().await?;
        let mut slot = self.0.slot.write().unwrap_or_else(|p| p.into_inner());
        slot.0 += 1;
        slot.1 = Some(con.clone());
        Ok((slot.0, con))
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        let slot = self.0.slot.read().unwrap_or_else(|p| p.into_inner());
        slot.1.as_ref().map(|c| (slot.0, c.clone()))
    }

    async fn open(&self) -> RedisResult<MultiplexedConnection> {
        let mut delay = Duration::from_millis(10);
        let mut attempt = 0;
        loop {
            let name = self.0.name.read().unwrap_or_else(|p| p.into_inner()).clone();
            match crate::connect::open_multiplexed(
                &self.0.client,
                &self.0.config,
                crate::connect::Kind::Shared,
                name.as_deref(),
                &self.0.lineage.opened,
            )
            .await
            {
                Ok(con) => return Ok(con),
                Err(e) if attempt >= self.0.retries || !e.is_io_error() => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Drops connection `generation` after it broke (a newer one stays).
    fn broke(&self, generation: u64, e: &redis::RedisError) {
        if !e.is_unrecoverable_error() {
            return;
        }
        let mut slot = self.0.slot.write().unwrap_or_else(|p| p.into_inner());
        if slot.0 == generation {
            slot.1 = None;
        }
    }

    /// Renames the open connection and every one opened later (`None`
    /// clears the name). Waits for an open under way, so a connection
    /// opened meanwhile is not left with the old name. The open connection
    /// makes the checks of its new configuration as it is renamed
    /// ([`crate::fence::renaming`]); one that fails them, or breaks, is
    /// dropped (the next request opens a new one, and reports why). A
    /// refusal of the name alone (an ACL without `CLIENT`) leaves the name
    /// as it was.
    pub(crate) async fn rename(&self, name: Option<String>) {
        let _opening = self.0.opening.lock().await;
        *self.0.name.write().unwrap_or_else(|p| p.into_inner()) = name.clone();
        if let Some((generation, mut con)) = self.current() {
            // The checks of a connection opened for the new configuration
            // too: one it retired is dropped, and the next request's open
            // reports why.
            let (pipe, checks) = crate::fence::renaming(name.as_deref());
            let accepted = match con.req_packed_commands(&pipe, 0, pipe.len()).await {
                Ok(replies) => checks
                    .verdict(name.as_deref(), replies.get(checks.first..).unwrap_or_default())
                    .is_ok(),
                Err(e) => !e.is_unrecoverable_error(),
            };
            if !accepted {
                let mut slot = self.0.slot.write().unwrap_or_else(|p| p.into_inner());
                if slot.0 == generation {
                    slot.1 = None;
                }
            }
        }
    }
}

impl Shared {
    /// One command on the connection (opened first if there is none); a
    /// failure that broke it drops it. The client's own path: no boxed
    /// future, as `ConnectionLike` needs.
    pub(crate) async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut con) = self.get().await?;
        let reply = con.req_packed_command(cmd).await;
        if let Err(e) = &reply {
            self.broke(generation, e);
        }
        reply
    }

    /// `count` replies of `pipe`'s commands from `offset` on, as
    /// [`command`](Self::command) sends one.
    pub(crate) async fn commands(&self, pipe: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let (generation, mut con) = self.get().await?;
        let reply = con.req_packed_commands(pipe, offset, count).await;
        if let Err(e) = &reply {
            self.broke(generation, e);
        }
        reply
    }
}

impl ConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.commands(cmd, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}
