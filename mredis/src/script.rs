//! Lua scripts over the fleet: a script runs on the server that owns its
//! keys (all keys must share a server), loading itself there when the server
//! answers NOSCRIPT, like redis-rs's `Script`.

use redis::{FromRedisValue, RedisResult, ToRedisArgs, Value};

use crate::error::client_error;
use crate::routing::{Move, Route, name_server, push_keys};

/// A Lua script, invoked with EVALSHA on the server that owns its keys.
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0"])?;
/// let script = mredis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
/// let n: i64 = script.key("counter").arg(5).invoke(&mr)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Script {
    inner: redis::Script,
    /// The same code behind a guard that runs it only where all its keys
    /// are, for keys being moved by a migration.
    guarded: redis::Script,
}

impl Script {
    /// Wraps Lua source code.
    pub fn new(code: &str) -> Script {
        Script {
            inner: redis::Script::new(code),
            guarded: redis::Script::new(&crate::migration::guarded_script(code)),
        }
    }

    /// The SHA1 the servers know the script by.
    pub fn get_hash(&self) -> &str {
        self.inner.get_hash()
    }

    /// Starts an invocation with its first key.
    pub fn key<T: ToRedisArgs>(&self, key: T) -> ScriptInvocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.key(key);
        inv
    }

    /// Starts an invocation with its first argument.
    pub fn arg<T: ToRedisArgs>(&self, arg: T) -> ScriptInvocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.arg(arg);
        inv
    }

    /// Starts an invocation without keys or arguments.
    pub fn prepare_invoke(&self) -> ScriptInvocation<'_> {
        ScriptInvocation {
            script: self,
            inner: self.inner.prepare_invoke(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A script with its keys and arguments, ready to run.
pub struct ScriptInvocation<'a> {
    script: &'a Script,
    inner: redis::ScriptInvocation<'a>,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ScriptInvocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptInvocation")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ScriptInvocation<'_> {
    /// Adds a key (it decides the server).
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        push_keys(&mut self.keys, &key);
        self.inner.key(key);
        self
    }

    /// Adds an argument.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self.inner.arg(arg);
        self
    }

    /// The guarded script's invocation on the old server of moving keys.
    fn guarded(&self) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.guarded.prepare_invoke();
        for k in &self.keys {
            inv.key(&k[..]);
        }
        for a in &self.args {
            inv.arg(&a[..]);
        }
        inv
    }

    /// Where the guarded run said to go next.
    fn after_guard<T: FromRedisValue>(
        core: &crate::routing::Core,
        moves: &[Move],
        server: usize,
        reply: RedisResult<Value>,
    ) -> Option<RedisResult<T>> {
        match reply {
            Err(e) if e.code() == Some(crate::migration::ABSENT) => None,
            Err(e) if e.code() == Some(crate::migration::PARTIAL) => Some(Err(crate::migration::try_again(
                core,
                &moves[0].key,
                moves[0].from,
                server,
            ))),
            Err(e) => Some(Err(e)),
            Ok(v) => Some(T::from_redis_value(v).map_err(Into::into)),
        }
    }

    fn single_from(core: &crate::routing::Core, moves: &[Move], server: usize) -> RedisResult<usize> {
        let from = moves[0].from;
        if moves.iter().any(|m| m.from != from) {
            return Err(crate::migration::try_again(core, &moves[0].key, from, server));
        }
        Ok(from)
    }

    fn route(&self, core: &crate::routing::Core) -> RedisResult<(usize, Vec<Move>)> {
        if self.keys.is_empty() {
            return Err(client_error(
                "a script without keys has no owning server; pass the keys it touches with key(), \
                 or name the server with invoke_on / invoke_on_async"
                    .to_string(),
            ));
        }
        match core.route_colocated("EVALSHA", &self.keys)? {
            Route::One { server, moves } => Ok((server, moves)),
            Route::Split(_) => Err(client_error("a script runs on one server".to_string())),
        }
    }

    /// Runs the script on the server named `server` (`host:port:db`, as
    /// [`MRedis::servers`](crate::MRedis::servers) names them), for scripts
    /// without keys. Its keys, if any, must belong to that server.
    pub fn invoke_on<T: FromRedisValue>(&self, mr: &crate::MRedis, server: &str) -> RedisResult<T> {
        let index = Self::named(mr.core(), &self.keys, server)?;
        mr.with_connection(index, |con| self.inner.invoke(con))
    }

    /// [`invoke_on`](Self::invoke_on) for the async client.
    pub async fn invoke_on_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis, server: &str) -> RedisResult<T> {
        let index = Self::named(mr.core(), &self.keys, server)?;
        let mut con = mr.connection(index)?;
        self.inner
            .invoke_async(&mut con)
            .await
            .map_err(|e| name_server(mr.core().server(index), e))
    }

    /// The index of the server named `server`; keys given must be its own.
    fn named(core: &crate::routing::Core, keys: &[Vec<u8>], server: &str) -> RedisResult<usize> {
        let index = (0..core.current)
            .find(|&i| core.name(i) == server)
            .ok_or_else(|| client_error(format!("no server named `{server}` in this client")))?;
        for key in keys {
            let (owner, from) = core.owner(key);
            if owner != index || from.is_some() {
                return Err(crate::routing::cross_server_error(
                    "EVALSHA",
                    key,
                    core.name(owner),
                    key,
                    server,
                ));
            }
        }
        Ok(index)
    }

    /// Runs the script on the server that owns its keys (sync client).
    pub fn invoke<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let (server, moves) = self.route(mr.core())?;
        if !moves.is_empty() {
            let from = Self::single_from(mr.core(), &moves, server)?;
            let reply = mr.with_connection(from, |con| self.guarded().invoke::<Value>(con));
            if let Some(done) = Self::after_guard(mr.core(), &moves, server, reply) {
                return done;
            }
        }
        mr.with_connection(server, |con| self.inner.invoke(con))
    }

    /// Runs the script on the server that owns its keys (async client).
    pub async fn invoke_async<T: FromRedisValue>(&self, mr: &crate::aio::MRedis) -> RedisResult<T> {
        let (server, moves) = self.route(mr.core())?;
        if !moves.is_empty() {
            let from = Self::single_from(mr.core(), &moves, server)?;
            let mut con = mr.connection(from)?;
            let reply = self
                .guarded()
                .invoke_async::<Value>(&mut con)
                .await
                .map_err(|e| name_server(mr.core().server(from), e));
            if let Some(done) = Self::after_guard(mr.core(), &moves, server, reply) {
                return done;
            }
        }
        let mut con = mr.connection(server)?;
        self.inner
            .invoke_async(&mut con)
            .await
            .map_err(|e| name_server(mr.core().server(server), e))
    }
}
