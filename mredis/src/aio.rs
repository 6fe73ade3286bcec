//! The async client (tokio): one multiplexed, self-reconnecting connection
//! per server (redis-rs `ConnectionManager`, opened lazily so a server that
//! is down does not keep the others from working). Routing, splitting and
//! merging are the sync client's (`routing`); only the I/O differs: calls on
//! several servers are sent concurrently and awaited together.
//!
//! # A closed shared connection
//!
//! Without RESP3, redis-rs's manager learns that the server closed its
//! connection (a restart, the server's idle `timeout`) only when a command
//! fails on it; it then reconnects. A request whose commands are all
//! read-only by the command table (GET, MGET, HGETALL, ...) that fails so
//! is sent once more, on the new connection, so a restart costs reads no
//! error. A write is not sent again (it may have reached the server before
//! the close); instead, a write to a server whose connection was idle a
//! second or more is preceded by a PING, which finds a closed connection
//! and has it replaced first. So a restart costs a write an error only when
//! the client was using that server within the last second (a write then
//! in flight, or just after): at most once per client.
//!
//! # Blocking commands
//!
//! BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP
//! and XREAD / XREADGROUP with `BLOCK` (the rows with a `block` field in
//! `commands.toml`) never go on the shared connection, where they would
//! hold up every other command to that server: each call takes a
//! connection of its own from a small per-server pool (at most
//! [`Builder::pool_size`](crate::Builder::pool_size) kept idle), used by
//! that call alone. Its deadline is the block time plus the response
//! timeout; a block time of 0 (block until answered, a queue worker) has
//! no client deadline.
//!
//! When a call ends without its reply (its deadline passed, or its future
//! was dropped: `tokio::time::timeout`, `select!`), mredis ends the command
//! on the server (`CLIENT UNBLOCK`, sent on the shared connection) and
//! reads its reply on the dedicated connection. If the server had already
//! taken something for it, that is given back: BLPOP's element is pushed
//! back to the head of its list, BRPOP's to the tail, BLMPOP's in their
//! order to the end they came from, BZPOPMIN / BZPOPMAX / BZMPOP members
//! with their scores. BLMOVE and BRPOPLPUSH have moved theirs to the
//! destination list, XREADGROUP's entries stay pending in the group, XREAD
//! takes nothing: nothing to give back. A connection is put back in the
//! pool only once its reply was read.
//!
//! The guarantee: every element is either returned to the caller or in
//! its key (left there, or given back), except in these cases:
//!
//! - the server cannot be asked (`CLIENT UNBLOCK` refused by an ACL, the
//!   server unreachable, or no reply within the response timeout), or the
//!   future is dropped outside a tokio runtime: the connection is then
//!   closed; the server, once it sees the close, unblocks that client and
//!   pops nothing for it, so an element is lost only if the server popped
//!   it before it saw the close (its reply was in flight);
//! - the give-back fails (the server went down, or the key now holds
//!   another type).
//!
//! A given-back element is where it came from, but other clients may have
//! seen the list without it in between, and pushes made meanwhile to the
//! same end come after it. (Measured, `tests/tests/connection_faults.rs`:
//! 2 000 elements, about 500 dropped BLPOPs, none lost; closing the
//! connection alone lost about 10% of them.)

pub use crate::async_client::MRedis;
pub use crate::handle::AsyncConnection as Connection;
pub use crate::pubsub::AsyncSubscriber as Subscriber;
