//! Results of commands sent to every server: one value per server, in
//! configuration order, and the error type that still carries the results of
//! the servers that answered when some did not.

use std::fmt;
use std::ops::Index;

use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, Value};

use crate::error::Failure;
use crate::routing::Topology;

/// One result per server, in configuration order, keyed by server name
/// (`host:port:db`).
///
/// ```no_run
/// # fn main() -> redis::RedisResult<()> {
/// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0"])?;
/// let sizes: mredis::PerServer<usize> = mr.dbsize()?;
/// for (server, n) in &sizes {
///     println!("{server}: {n} keys");
/// }
/// let first = sizes["127.0.0.1:6379:0"];
/// // The fleet as one: a total, or one list.
/// let total: usize = sizes.sum();
/// let keys: Vec<String> = mr.keys::<_, Vec<String>>("user:*")?.flatten();
/// # Ok(()) }
/// ```
///
/// [`values`](PerServer::values) and [`into_values`](PerServer::into_values)
/// give the values without the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerServer<T> {
    entries: Vec<(String, T)>,
}

impl<T> PerServer<T> {
    pub(crate) fn from_entries(entries: Vec<(String, T)>) -> Self {
        PerServer { entries }
    }

    /// The result of the server named `name` (`host:port:db`).
    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// (server name, value) pairs in configuration order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &T)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Server names in configuration order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Values in configuration order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &T> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values, in configuration order.
    pub fn into_values(self) -> Vec<T> {
        self.entries.into_iter().map(|(_, v)| v).collect()
    }

    /// The sum of the values: the fleet's total of a count (`DBSIZE`, ...).
    ///
    /// ```no_run
    /// # fn main() -> redis::RedisResult<()> {
    /// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
    /// let keys: usize = mr.dbsize::<usize>()?.sum();
    /// # Ok(()) }
    /// ```
    pub fn sum<S>(&self) -> S
    where
        S: for<'a> std::iter::Sum<&'a T>,
    {
        self.entries.iter().map(|(_, v)| v).sum()
    }

    /// Every server's items in one list, in configuration order: the
    /// fleet's answer to a list-valued command (`KEYS`, ...).
    ///
    /// ```no_run
    /// # fn main() -> redis::RedisResult<()> {
    /// # let mr = mredis::MRedis::new(["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"])?;
    /// let keys: Vec<String> = mr.keys::<_, Vec<String>>("user:*")?.flatten();
    /// # Ok(()) }
    /// ```
    pub fn flatten<U>(self) -> Vec<U>
    where
        T: IntoIterator<Item = U>,
    {
        self.entries.into_iter().flat_map(|(_, v)| v).collect()
    }

    /// Number of servers with a result.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no server has a result.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<T> Index<&str> for PerServer<T> {
    type Output = T;

    /// Panics if no server has that name, like indexing a `HashMap`; use
    /// [`PerServer::get`] to handle that case.
    fn index(&self, name: &str) -> &T {
        match self.get(name) {
            Some(v) => v,
            None => panic!(
                "mredis: no result for server `{name}` (servers: {:?})",
                self.names().collect::<Vec<_>>()
            ),
        }
    }
}

impl<T> IntoIterator for PerServer<T> {
    type Item = (String, T);
    type IntoIter = std::vec::IntoIter<(String, T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'p, T> IntoIterator for &'p PerServer<T> {
    type Item = (&'p str, &'p T);
    type IntoIter = std::iter::Map<std::slice::Iter<'p, (String, T)>, fn(&'p (String, T)) -> (&'p str, &'p T)>;

    fn into_iter(self) -> Self::IntoIter {
        fn split<T>(e: &(String, T)) -> (&str, &T) {
            (e.0.as_str(), &e.1)
        }
        self.entries.iter().map(split::<T>)
    }
}

/// A command sent to every server failed on some of them.
///
/// It names each failed server with its error and keeps the results of the
/// servers that did answer, so nothing they returned is lost. Converts into
/// a [`RedisError`] with `?`.
#[derive(Debug, Clone)]
pub struct FanOutError<T> {
    command: String,
    succeeded: PerServer<T>,
    failed: Vec<(String, RedisError)>,
}

impl<T> FanOutError<T> {
    pub(crate) fn new(command: String, succeeded: PerServer<T>, failed: Vec<(String, RedisError)>) -> Self {
        FanOutError {
            command,
            succeeded,
            failed,
        }
    }

    /// The results of the servers that answered.
    pub fn succeeded(&self) -> &PerServer<T> {
        &self.succeeded
    }

    /// Each failed server's name with its error, in configuration order.
    pub fn failed(&self) -> &[(String, RedisError)] {
        &self.failed
    }

    /// The results that arrived and the failures.
    pub fn into_parts(self) -> (PerServer<T>, Vec<(String, RedisError)>) {
        (self.succeeded, self.failed)
    }

    /// The same failure as a `RedisError` (the servers' results are dropped).
    fn to_redis_error(&self) -> RedisError {
        let mut failure = Failure::new(&self.command);
        for name in self.succeeded.names() {
            failure.succeeded(name, 1);
        }
        for (name, e) in &self.failed {
            failure.failed(name, e.clone());
        }
        match failure.into_result() {
            Err(e) => e,
            Ok(()) => RedisError::from((ErrorKind::Client, "mredis: fan-out failed")),
        }
    }
}

impl<T> fmt::Display for FanOutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_redis_error(), f)
    }
}

impl<T: fmt::Debug> std::error::Error for FanOutError<T> {}

impl<T> From<FanOutError<T>> for RedisError {
    fn from(e: FanOutError<T>) -> RedisError {
        e.to_redis_error()
    }
}

/// Turns per-server replies (one per server, in `Topology::servers` order) into
/// a `PerServer`, or a `FanOutError` that keeps the successful ones.
pub(crate) fn collect<RV: FromRedisValue>(
    core: &Topology,
    command: &str,
    replies: Vec<RedisResult<Value>>,
) -> Result<PerServer<RV>, FanOutError<RV>> {
    let mut ok = Vec::with_capacity(replies.len());
    let mut failed = Vec::new();
    for (i, reply) in replies.into_iter().enumerate() {
        let name = core.name(i).to_string();
        match reply
            .and_then(Value::extract_error)
            .and_then(|v| RV::from_redis_value(v).map_err(RedisError::from))
        {
            Ok(v) => ok.push((name, v)),
            Err(e) => failed.push((name, e)),
        }
    }
    if failed.is_empty() {
        Ok(PerServer::from_entries(ok))
    } else {
        Err(FanOutError::new(
            command.to_string(),
            PerServer::from_entries(ok),
            failed,
        ))
    }
}
