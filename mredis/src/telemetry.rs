//! Tracing (feature `tracing`): one span per command, named after it, with
//! the OpenTelemetry database attributes that fit (`db.system.name`,
//! `db.operation.name`, `db.namespace`, `server.address`, `server.port`,
//! `error.type`), the route class (`mredis.route`: `key`, `split`, `all`,
//! `pipeline`, or `metadata` for the `COMMAND` a routed handle sends once to
//! learn the servers' commands) and the outcome (`otel.status_code`). Pipelines
//! through a routed handle get a span as the client's do. A command on several
//! servers has one child span per server. Spans never carry keys, values,
//! arguments or credentials. Without the feature this compiles to nothing.

use redis::{Cmd, RedisResult};

use crate::routing::Topology;

/// A span, or nothing without the `tracing` feature.
#[cfg(feature = "tracing")]
#[derive(Debug, Clone)]
pub(crate) struct Span(pub(crate) tracing::Span);

/// A span, or nothing without the `tracing` feature.
#[cfg(not(feature = "tracing"))]
#[derive(Debug, Clone)]
pub(crate) struct Span;

#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
fn operation(cmd: &Cmd) -> String {
    crate::routing::command_name(cmd).to_ascii_uppercase()
}

/// Whether any subscriber may want INFO spans (tracing's global level
/// hint): false without a subscriber, so a span's fields are not built for
/// nothing. Never false where a span would be recorded.
#[cfg(feature = "tracing")]
#[inline]
fn enabled() -> bool {
    tracing::level_enabled!(tracing::Level::INFO)
}

impl Span {
    /// The span of one command (or pipeline) through a client.
    #[inline]
    pub(crate) fn command(cmd: &Cmd, route: &'static str) -> Span {
        #[cfg(feature = "tracing")]
        {
            // Nothing built (the name's upper-case copy) when no
            // subscriber wants the span.
            if !enabled() {
                return Span(tracing::Span::none());
            }
            Span::named(&operation(cmd), route)
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (cmd, route);
            Span
        }
    }

    /// The span of one command by its (upper-case) name.
    #[inline]
    pub(crate) fn named(op: &str, route: &'static str) -> Span {
        #[cfg(feature = "tracing")]
        {
            Span(tracing::info_span!(
                "redis",
                otel.name = %op,
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = %op,
                mredis.route = route,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            ))
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (op, route);
            Span
        }
    }

    /// The span of a pipeline of `n` commands.
    #[inline]
    pub(crate) fn pipeline(n: usize) -> Span {
        #[cfg(feature = "tracing")]
        {
            Span(tracing::info_span!(
                "redis",
                otel.name = "PIPELINE",
                otel.kind = "client",
                db.system.name = "redis",
                db.operation.name = "PIPELINE",
                db.operation.batch.size = n,
                mredis.route = "pipeline",
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            ))
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = n;
            Span
        }
    }

    /// The part of a command sent to server `index` (a child of the
    /// current span).
    #[inline]
    pub(crate) fn server(core: &Topology, index: usize) -> Span {
        #[cfg(feature = "tracing")]
        {
            if !enabled() {
                return Span(tracing::Span::none());
            }
            let (host, port, db) = core
                .servers
                .get(index)
                .map(|s| (s.host().to_string(), s.port(), s.db()))
                .unwrap_or_default();
            Span(tracing::info_span!(
                "redis.server",
                server.address = %host,
                server.port = port,
                db.namespace = db,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            ))
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (core, index);
            Span
        }
    }

    /// Records how it ended: `OK`, or `ERROR` with the error's code (or kind).
    #[inline]
    pub(crate) fn outcome<T>(&self, result: &RedisResult<T>) {
        #[cfg(feature = "tracing")]
        match result {
            Ok(_) => {
                self.0.record("otel.status_code", "OK");
            }
            Err(e) => {
                self.0.record("otel.status_code", "ERROR");
                let kind = match e.code() {
                    Some(code) => code.to_string(),
                    None => format!("{:?}", e.kind()),
                };
                self.0.record("error.type", kind.as_str());
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = result;
    }

    /// Records how a fan-out ended: `OK`, or the first failed server's error.
    #[inline]
    pub(crate) fn fan_out_outcome<T>(&self, result: &Result<crate::PerServer<T>, crate::FanOutError<T>>) {
        #[cfg(feature = "tracing")]
        match result {
            Ok(_) => self.outcome(&Ok::<(), redis::RedisError>(())),
            Err(e) => {
                if let Some((_, first)) = e.failed().first() {
                    self.outcome(&Err::<(), _>(first.clone()));
                }
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = result;
    }

    /// Runs `f` inside the span (no outcome recorded).
    #[inline]
    pub(crate) fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "tracing")]
        let _entered = self.0.enter();
        f()
    }

    /// Runs `f` inside the span and records its outcome.
    #[inline]
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> RedisResult<T>) -> RedisResult<T> {
        #[cfg(feature = "tracing")]
        let _entered = self.0.enter();
        let result = f();
        self.outcome(&result);
        result
    }

    /// Runs the future `f` inside the span and records its outcome.
    /// (Combinators, not an `async fn`: `f` is moved once, into the
    /// returned future, and not again on its first poll.)
    #[inline]
    pub(crate) fn run_async<'s, T, F>(&'s self, f: F) -> impl std::future::Future<Output = RedisResult<T>> + 's
    where
        F: std::future::Future<Output = RedisResult<T>> + 's,
    {
        #[cfg(feature = "tracing")]
        let f = tracing::Instrument::instrument(f, self.0.clone());
        futures::FutureExt::inspect(f, move |result| self.outcome(result))
    }
}
