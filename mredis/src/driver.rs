//! The execution seam as a type: the sync [`Driver`] and the async
//! [`AsyncDriver`], implemented by the two clients' configurations.
//!
//! Every user of the step machines (the generated methods, pipelines,
//! scripts, scan, the routed handles, transactions) runs them through one
//! of these traits, the way redis-rs's `Pipeline::query` takes any
//! `ConnectionLike`; the clients have no other public way to reach a
//! server. What a request is promised is kept behind the trait, once for
//! every user: the read policy, `WAIT` after a write when replica
//! acknowledgements are on, the wait for Sentinel's new primary after a
//! failover, one deadline per call. A connection held across requests
//! (WATCH ... EXEC) is the seam's too: [`Driver::hold`] lends it,
//! [`Driver::settle_held`] applies the same promises to what ran on it.

use std::future::Future;
use std::sync::Arc;

use redis::{Cmd, FromRedisValue, RedisResult};

use crate::exec::{FanOut, Held, Machine, fan_out_result};
use crate::per_server::{FanOutError, PerServer};
use crate::routed::Routed;
use crate::routing::{Route, Topology};
use crate::telemetry::Span;

/// The sync execution seam.
pub(crate) trait Driver {
    /// A connection of one server held across requests.
    type Held;

    /// The configuration's topology.
    fn core(&self) -> &Arc<Topology>;

    /// Carries `machine`'s requests until it is done.
    fn drive<M: Machine>(&self, machine: M) -> RedisResult<M::Output>;

    /// A connection of server `index` held across requests (a WATCH ...
    /// EXEC); give it back with [`release`](Self::release).
    fn hold(&self, index: usize) -> RedisResult<Self::Held>;

    /// Gives back a held connection (dropped if it failed below a reply).
    fn release(&self, held: Self::Held);

    /// After `result` of a request on `held`: the promises every write has
    /// on the request path. With replica acknowledgements on, a `WAIT` on
    /// the same connection after a request that `wrote`; a refusal by a
    /// replica or a primary gone waits for Sentinel's new primary
    /// ([`Held::FailedOver`]: nothing ran); a reply cut or late after the
    /// write is an unknown outcome.
    fn settle_held<T>(
        &self,
        held: &mut Self::Held,
        result: RedisResult<T>,
        wrote: impl FnOnce(&T) -> bool,
    ) -> RedisResult<Held<T>>;

    /// A routed command on one server, split over several, or on every
    /// server merged; keys a migration is moving go through the migration
    /// machines.
    fn run<RV: FromRedisValue>(&self, route: Route, cmd: &Cmd) -> RedisResult<RV> {
        let value =
            Span::command(cmd, Routed::class(&route)).run(|| self.drive(Routed::new(self.core(), &route, cmd)))?;
        Ok(RV::from_redis_value(value)?)
    }

    /// `cmd` on every server: one reply per server.
    fn fan_out<RV: FromRedisValue>(&self, cmd: &Cmd) -> Result<PerServer<RV>, FanOutError<RV>> {
        let span = Span::command(cmd, "all");
        let result = span.in_scope(|| fan_out_result(self.core(), cmd, self.drive(FanOut::new(self.core(), cmd))));
        span.fan_out_outcome(&result);
        result
    }
}

/// The async execution seam: [`Driver`], awaited.
pub(crate) trait AsyncDriver: Sync {
    /// A connection of one server held across requests.
    type Held: Send;

    /// The configuration's topology.
    fn core(&self) -> &Arc<Topology>;

    /// Carries `machine`'s requests until it is done.
    fn drive<M>(&self, machine: M) -> impl Future<Output = RedisResult<M::Output>> + Send
    where
        M: Machine + Send,
        M::Output: Send;

    /// See [`Driver::hold`].
    fn hold(&self, index: usize) -> impl Future<Output = RedisResult<Self::Held>> + Send;

    /// See [`Driver::release`].
    fn release(&self, held: Self::Held);

    /// See [`Driver::settle_held`].
    fn settle_held<T: Send>(
        &self,
        held: &mut Self::Held,
        result: RedisResult<T>,
        wrote: impl FnOnce(&T) -> bool + Send,
    ) -> impl Future<Output = RedisResult<Held<T>>> + Send;
}

/// [`Driver::run`] on an async driver (a free function, so its future is
/// `Send` whenever what it holds is).
pub(crate) async fn run_async<D: AsyncDriver, RV: FromRedisValue>(d: &D, route: Route, cmd: &Cmd) -> RedisResult<RV> {
    let value = Span::command(cmd, Routed::class(&route))
        .run_async(d.drive(Routed::new(d.core(), &route, cmd)))
        .await?;
    Ok(RV::from_redis_value(value)?)
}

/// [`Driver::fan_out`] on an async driver.
pub(crate) async fn fan_out_async<D: AsyncDriver, RV: FromRedisValue>(
    d: &D,
    cmd: &Cmd,
) -> Result<PerServer<RV>, FanOutError<RV>> {
    let span = Span::command(cmd, "all");
    let result = span
        .run_async(async { Ok(fan_out_result(d.core(), cmd, d.drive(FanOut::new(d.core(), cmd)).await)) })
        .await
        .unwrap_or_else(|e| fan_out_result(d.core(), cmd, Err(e)));
    span.fan_out_outcome(&result);
    result
}
