//! Lua scripts over the fleet: a script runs on the server that owns its
//! keys (all keys must share a server), loading itself there when the server
//! answers NOSCRIPT, like redis-rs's `Script`.

use redis::{Cmd, FromRedisValue, RedisError, RedisResult, ToRedisArgs, Value};

use crate::driver::{AsyncDriver, Driver};
use crate::error::client_error;
use crate::exec::{Cmds, Machine, Request, Step, one};
use crate::routing::{Move, Route, Topology, name_server, push_keys};

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
    code: String,
    /// The same code behind a guard that runs it only where all its keys
    /// are, for keys being moved by a migration.
    guarded: redis::Script,
    guarded_code: String,
}

impl Script {
    /// Wraps Lua source code.
    pub fn new(code: &str) -> Script {
        let guarded_code = crate::migration::guarded_script(code);
        Script {
            inner: redis::Script::new(code),
            code: code.to_string(),
            guarded: redis::Script::new(&guarded_code),
            guarded_code,
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
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// A script with its keys and arguments, ready to run.
pub struct ScriptInvocation<'a> {
    script: &'a Script,
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
        self
    }

    /// Adds an argument.
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn route(&self, core: &Topology) -> RedisResult<(usize, Vec<Move>)> {
        if self.keys.is_empty() {
            return Err(client_error(
                "a script without keys has no owning server; pass the keys it touches with key(), \
                 or name the server with invoke_on / invoke_on_async"
                    .to_string(),
            ));
        }
        match core.route_colocated("EVALSHA", &self.keys)? {
            Route::One { server, moves } => Ok((server, moves)),
            Route::Split(_) | Route::All(_) => Err(client_error("a script runs on one server".to_string())),
        }
    }

    /// The index of the server named `server`; keys given must be its own.
    fn named(core: &Topology, keys: &[Vec<u8>], server: &str) -> RedisResult<usize> {
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

    /// The invocation as a machine: on the server that owns its keys, or
    /// on the server named `on`.
    fn run<'s>(&'s self, core: &'s Topology, on: Option<&str>) -> ScriptRun<'s> {
        let target = match on {
            Some(name) => Self::named(core, &self.keys, name).map(|index| (index, Vec::new())),
            None => self.route(core),
        };
        let state = match target {
            Err(e) => Run::Refused(Some(e)),
            Ok((server, moves)) if moves.is_empty() => Run::Main {
                server,
                stage: Stage::Eval,
            },
            Ok((server, moves)) => {
                let from = moves[0].from;
                if moves.iter().any(|m| m.from != from) {
                    Run::Refused(Some(crate::migration::try_again(core, &moves[0].key, from, server)))
                } else {
                    Run::Guard {
                        from,
                        server,
                        moves,
                        stage: Stage::Eval,
                    }
                }
            }
        };
        ScriptRun {
            inv: self,
            core,
            state,
            sent: Cmd::new(),
            waiting: false,
            patience: Default::default(),
        }
    }

    /// The script's value as `T`; a value of the wrong type from the
    /// server that ran it unguarded names that server.
    fn convert<T: FromRedisValue>(core: &Topology, ran: RedisResult<(Value, Option<usize>)>) -> RedisResult<T> {
        let (value, ran_on) = ran?;
        T::from_redis_value(value).map_err(|e| match ran_on {
            Some(server) => name_server(core.server(server), e.into()),
            None => e.into(),
        })
    }

    /// Runs the script on the server named `server` (`host:port:db`, as
    /// [`MRedis::servers`](crate::MRedis::servers) names them), for scripts
    /// without keys. Its keys, if any, must belong to that server.
    pub fn invoke_on<T: FromRedisValue>(&self, mr: &crate::MRedis, server: &str) -> RedisResult<T> {
        let f = mr.fleet();
        Self::convert(f.core(), f.drive(self.run(f.core(), Some(server))))
    }

    /// [`invoke_on`](Self::invoke_on) for the async client.
    pub async fn invoke_on_async<T: FromRedisValue>(
        &self,
        mr: &crate::async_client::MRedis,
        server: &str,
    ) -> RedisResult<T> {
        let f = mr.fleet();
        Self::convert(f.core(), f.drive(self.run(f.core(), Some(server))).await)
    }

    /// Runs the script on the server that owns its keys (sync client).
    pub fn invoke<T: FromRedisValue>(&self, mr: &crate::MRedis) -> RedisResult<T> {
        let f = mr.fleet();
        Self::convert(f.core(), f.drive(self.run(f.core(), None)))
    }

    /// Runs the script on the server that owns its keys (async client).
    pub async fn invoke_async<T: FromRedisValue>(&self, mr: &crate::async_client::MRedis) -> RedisResult<T> {
        let f = mr.fleet();
        Self::convert(f.core(), f.drive(self.run(f.core(), None)).await)
    }
}

/// Where an EVALSHA stands: sent; NOSCRIPT, so SCRIPT LOAD sent; sent
/// again after the load (as redis-rs's `invoke`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Eval,
    Load,
    Again,
}

enum Run {
    /// Refused before sending anything.
    Refused(Option<RedisError>),
    /// Keys moving: the guarded script on their old server, which runs it
    /// if they are all still there.
    Guard {
        from: usize,
        server: usize,
        moves: Vec<Move>,
        stage: Stage,
    },
    /// The script on its server.
    Main { server: usize, stage: Stage },
}

/// A script invocation as a sans-I/O machine. Its output is the script's
/// value and, when it ran unguarded, its server.
struct ScriptRun<'s> {
    inv: &'s ScriptInvocation<'s>,
    core: &'s Topology,
    state: Run,
    /// The command of the request in flight.
    sent: Cmd,
    /// Waiting to send the guard again (a rebalance is moving a key).
    waiting: bool,
    patience: crate::migration::Patience,
}

impl ScriptRun<'_> {
    /// Sends the command of the current state.
    fn send(&mut self) -> Step<'_, (Value, Option<usize>)> {
        let script = self.inv.script;
        let (server, stage, hash, code) = match &self.state {
            Run::Refused(e) => {
                let e = e.clone().unwrap_or_else(|| client_error("no reply".to_string()));
                return Step::Done(Err(e));
            }
            Run::Guard { from, stage, .. } => (*from, *stage, script.guarded.get_hash(), &script.guarded_code),
            Run::Main { server, stage } => (*server, *stage, script.inner.get_hash(), &script.code),
        };
        self.sent = if stage == Stage::Load {
            let mut c = redis::cmd("SCRIPT");
            c.arg("LOAD").arg(code.as_bytes());
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(hash.as_bytes())
                .arg(self.inv.keys.len())
                .arg(&self.inv.keys[..])
                .arg(&self.inv.args[..]);
            c
        };
        Step::Send(vec![Request {
            server,
            block: None,
            cmds: Cmds::one(&self.sent),
        }])
    }

    fn set_stage(&mut self, next: Stage) {
        if let Run::Guard { stage, .. } | Run::Main { stage, .. } = &mut self.state {
            *stage = next;
        }
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

impl Machine for ScriptRun<'_> {
    type Output = (Value, Option<usize>);

    fn start(&mut self) -> Step<'_, Self::Output> {
        self.send()
    }

    fn next(&mut self, replies: Vec<RedisResult<Vec<Value>>>) -> Step<'_, Self::Output> {
        if std::mem::take(&mut self.waiting) {
            return self.send();
        }
        // Error replies anywhere in the value are errors, as `Cmd::query` has them.
        let reply = one(replies.into_iter().next()).and_then(Value::extract_error);
        let stage = match &self.state {
            Run::Refused(_) => return self.send(),
            Run::Guard { stage, .. } | Run::Main { stage, .. } => *stage,
        };
        match (stage, &reply) {
            (Stage::Eval, Err(e)) if is_noscript(e) => {
                self.set_stage(Stage::Load);
                return self.send();
            }
            (Stage::Load, Ok(_)) => {
                self.set_stage(Stage::Again);
                return self.send();
            }
            _ => {}
        }
        match (&self.state, reply) {
            (Run::Guard { server, .. }, Err(e)) if e.code() == Some(crate::migration::ABSENT) => {
                // None of the keys is on the old server: the new one runs it.
                self.state = Run::Main {
                    server: *server,
                    stage: Stage::Eval,
                };
                self.send()
            }
            (Run::Guard { server, moves, .. }, Err(e)) if e.code() == Some(crate::migration::MOVING) => {
                match self.patience.next_wait() {
                    Some(wait) => {
                        self.waiting = true;
                        Step::Wait(wait)
                    }
                    None => Step::Done(Err(crate::migration::still_moving(
                        self.core,
                        &moves[0].key,
                        moves[0].from,
                        *server,
                    ))),
                }
            }
            (Run::Guard { server, moves, .. }, Err(e)) if e.code() == Some(crate::migration::PARTIAL) => {
                Step::Done(Err(crate::migration::try_again(
                    self.core,
                    &moves[0].key,
                    moves[0].from,
                    *server,
                )))
            }
            (Run::Main { server, .. }, Ok(v)) => Step::Done(Ok((v, Some(*server)))),
            (_, reply) => Step::Done(reply.map(|v| (v, None))),
        }
    }
}
