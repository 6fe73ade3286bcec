//! The options a [`Builder`](crate::Builder) carries, shared by the sync and
//! async clients.

use std::time::Duration;

use crate::placement::Mode;
use crate::server::Server;

/// Options shared by the sync and async clients.
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) pool_size: u32,
    pub(crate) hash_tags: Option<bool>,
    pub(crate) mode: Mode,
    pub(crate) retries: usize,
    pub(crate) migrating_from: Option<std::sync::Arc<OldConfig>>,
    pub(crate) max_arg_size: usize,
    pub(crate) health: Option<crate::health::HealthCheck>,
    pub(crate) read_from: ReadFrom,
    pub(crate) acks: Option<Acks>,
    pub(crate) failover_wait: Duration,
    /// Name connections (`CLIENT SETNAME`) after the configuration.
    pub(crate) name_connections: bool,
    /// The application's part of the connection names.
    pub(crate) client_name: Option<String>,
    /// Client-side caching: its memory bound in bytes.
    pub(crate) cache: Option<usize>,
}

/// Where read-only commands go on shards with replicas
/// ([`Builder::read_from`](crate::Builder::read_from),
/// [`MRedis::reading_from`](crate::MRedis::reading_from)). Only commands
/// the command table marks read-only (`access = "read"`, not blocking) go
/// to a replica; everything else goes to the primary. A replica may lag
/// its primary: a read from one may not see a write just made (no
/// read-your-writes), so read a key you just wrote with [`ReadFrom::Primary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadFrom {
    /// Every command on the primary (the default).
    #[default]
    Primary,
    /// Reads on a replica, taken in turn; on the primary when the shard
    /// has none up. A replica that fails a read (no reply in time, a
    /// refused or broken connection) is passed over for 5 s; the read is
    /// sent again to the primary within what is left of the call's
    /// response timeout (a read cut by a full timeout on the replica
    /// fails with that replica's error rather than wait a second timeout).
    PreferReplica,
    /// Reads on a replica only: an error when the shard has none up.
    ReplicaOnly,
    /// Reads on whichever node of the shard, its primary or one of its
    /// replicas, answers fastest now; writes on the primary.
    ///
    /// - **Measured** by a background prober: one thread per client
    ///   configuration (shared by its clones and
    ///   [`reading_from`](crate::MRedis::reading_from) views), started at
    ///   build when this is the [`Builder::read_from`](crate::Builder::read_from)
    ///   policy and otherwise with the first read that uses it, and only if
    ///   some shard has replicas or is managed by Sentinel. Every 500 ms it
    ///   sends `PING` to every node of every shard, one after the other, on
    ///   a connection of its own, with a deadline of 1 s for the connect
    ///   and the reply (a node that does not answer costs the round at most
    ///   that). Each node keeps a smoothed round trip (a new sample weighs
    ///   a quarter; the first sets it). A node that fails its `PING` is
    ///   *not answering* until a `PING` succeeds again. The prober follows
    ///   failovers and changes of replicas: a node no longer listed is
    ///   dropped, a new one starts unmeasured. Operators see the estimates
    ///   with [`Server::latencies`](crate::Server::latencies) and
    ///   `mredis stats`.
    /// - **Chosen** per request: among the nodes with an estimate, those
    ///   within 20 % (or 200 µs, whichever is larger) of the fastest take
    ///   the reads in turn, so nodes that are about equal (one LAN) still
    ///   share the load. A request with several commands goes to one node.
    /// - **Before any estimate** (or when no node answers the prober):
    ///   as [`ReadFrom::PreferReplica`].
    /// - **A replica that fails a read** (no connection, no reply in time)
    ///   is marked not answering at once, and the read is sent again to the
    ///   primary, as under `PreferReplica`. A read that went to the primary
    ///   fails or follows a failover as any request to the primary does.
    ///
    /// Consistency is that of `PreferReplica`: a read may go to a lagging
    /// replica.
    LowestLatency,
}

/// Writes acknowledged by replicas ([`Builder::replica_acks`](crate::Builder::replica_acks)):
/// every request with a write is followed, on the same connection, by
/// `WAIT replicas timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acks {
    /// Replicas that must have the write.
    pub replicas: u32,
    /// How long the primary waits for them.
    pub timeout: Duration,
}

/// The configuration a client is moving away from (see
/// [`Builder::migrating_from`]).
#[derive(Debug, Clone)]
pub(crate) struct OldConfig {
    pub(crate) servers: Vec<Server>,
    pub(crate) options: Options,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(5)),
            pool_size: 16,
            hash_tags: None,
            mode: Mode::Standard,
            retries: 1,
            migrating_from: None,
            max_arg_size: 512 * 1024 * 1024,
            health: None,
            read_from: ReadFrom::Primary,
            acks: None,
            failover_wait: Duration::from_secs(5),
            name_connections: true,
            client_name: None,
            cache: None,
        }
    }
}
