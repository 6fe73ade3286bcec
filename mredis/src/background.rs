//! A client's background work, in one owner: the Sentinel watchers (the
//! current configuration's shards, and while migrating the old one's),
//! the health checker, the latency prober of `ReadFrom::LowestLatency`
//! and a migration-aware client's finish watcher. Each is a
//! [`Task`](crate::task::Task); all are started by the client's build (the
//! prober at build under that policy, else on its first use) and stopped
//! when the last holder of the [`Running`] goes: the client's
//! configuration and its subscribers hold it; a pipeline, which holds only
//! the [`Topology`] (a value, routed again on a later configuration), does
//! not, so a pipeline kept after a
//! [`reconfigure`](crate::MRedis::reconfigure) keeps no thread running.
//! Every connection they open is opened by [`crate::connect`], named after
//! the client, with the builder's timeouts.

use std::sync::{Arc, OnceLock};

use redis::RedisResult;

use crate::options::{Options, ReadFrom};
use crate::routing::Topology;
use crate::task::Task;

/// A client configuration with its background work running.
#[derive(Debug)]
pub(crate) struct Running {
    /// The configuration.
    pub(crate) core: Arc<Topology>,
    /// Stopped when dropped.
    _tasks: Vec<Task>,
    /// Started at build under `ReadFrom::LowestLatency`, else by the
    /// first read under it (`None`: nothing to measure).
    prober: OnceLock<Option<Task>>,
    /// The client-side cache, with its invalidation listeners among the
    /// tasks (async clients built with `Builder::client_cache`).
    pub(crate) cache: Option<Arc<crate::cache::Cache>>,
}

impl Running {
    /// Starts `core`'s background work as `options` ask: asks every
    /// Sentinel shard for its primary once before returning, so a client
    /// built while the sentinels answer knows its primaries before its
    /// first command.
    pub(crate) fn start(core: Arc<Topology>, options: &Options) -> RedisResult<Running> {
        Running::start_with(core, options, false)
    }

    /// The same, with the client-side cache if `options` ask for one and
    /// the client can use it (`cache`: the async client).
    pub(crate) fn start_with(core: Arc<Topology>, options: &Options, cache: bool) -> RedisResult<Running> {
        let connector = core.connector();
        let current = &core.servers[..core.current];
        let mut tasks = Vec::new();
        tasks.extend(crate::sentinel::start(current, &connector)?);
        // The old configuration's Sentinel shards the new one lacks.
        tasks.extend(crate::sentinel::start(&core.servers[core.current..], &connector)?);
        if let (Some(health), Some(check)) = (&core.health, &options.health) {
            tasks.push(crate::health::start(
                health.clone(),
                current.to_vec(),
                options.mode,
                options.hash_tags,
                check.clone(),
                core.timeouts.response,
                &connector,
            )?);
        }
        if let Some((marker, finished)) = core.finish_marker() {
            // A watcher that cannot start leaves the client doing its
            // migration checks: slower, never wrong.
            tasks.extend(crate::finish::watch(current.to_vec(), marker, finished, &connector));
        }
        let cache = match options.cache.filter(|_| cache) {
            Some(bytes) => {
                let made = Arc::new(crate::cache::Cache::new(bytes, current));
                tasks.extend(crate::cache::start(&made, current, &connector)?);
                Some(made)
            }
            None => None,
        };
        let prober = OnceLock::new();
        if options.read_from == ReadFrom::LowestLatency {
            let _ = prober.set(crate::latency::start(&core.servers, &connector)?);
        }
        Ok(Running {
            core,
            _tasks: tasks,
            prober,
            cache,
        })
    }

    /// Starts the latency prober if it is not running (a read under
    /// `ReadFrom::LowestLatency`). A prober that cannot start leaves the
    /// policy without estimates: it reads as `PreferReplica` does.
    pub(crate) fn probe_latencies(&self) {
        self.prober.get_or_init(|| {
            crate::latency::start(&self.core.servers, &self.core.connector())
                .ok()
                .flatten()
        });
    }
}
