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
        }
    }
}
