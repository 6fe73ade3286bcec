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
}

/// Where read-only commands go on shards with replicas
/// ([`Builder::read_from`](crate::Builder::read_from),
/// [`MRedis::reading_from`](crate::MRedis::reading_from)). Only commands
/// the command table marks read-only (`access = "read"`, not blocking) go
/// to a replica; everything else goes to the primary. A replica may lag
/// its primary: a read from one may not see a write just made (no
/// read-your-writes), so read a key you just wrote with [`ReadFrom::Primary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// Every command on the primary (the default).
    #[default]
    Primary,
    /// Reads on a replica, taken in turn; on the primary when the shard
    /// has none, or when the replica fails to answer (the read is sent
    /// again to the primary).
    PreferReplica,
    /// Reads on a replica only: an error when the shard has none up.
    ReplicaOnly,
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
        }
    }
}
