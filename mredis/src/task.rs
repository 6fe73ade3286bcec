//! The one kind of background thread mredis runs: a named thread with a
//! stop flag ([`Stop`]) that it sleeps on, so asking it to stop wakes it
//! at once. A [`Task`] is the handle: dropping it (or
//! [`Task::stop`]) asks the thread to stop. The Sentinel watcher, the
//! health checker (and its key mover), the latency prober and the finish
//! watcher are tasks, started and owned by a client's background
//! ([`crate::background`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::RedisResult;

/// A task's stop flag, shared by the task's thread and its handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    /// Whether the task was asked to stop.
    pub(crate) fn stopped(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`, waking at once when asked to stop: whether it
    /// was asked.
    pub(crate) fn wait(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let (lock, wake) = &*self.0;
        let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = wake.wait_timeout(stopped, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Asks the task (and every thread it started under this flag) to stop.
    pub(crate) fn raise(&self) {
        let (lock, wake) = &*self.0;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }

    /// Starts a helper thread under this flag (the health checker's key
    /// mover): it stops with the task that started it.
    pub(crate) fn spawn(&self, name: &str, f: impl FnOnce(Stop) + Send + 'static) -> RedisResult<()> {
        let stop = self.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(stop))
            .map(drop)
            .map_err(|e| crate::error::client_error(format!("cannot start the thread {name}: {e}")))
    }
}

/// A running background thread; asked to stop when dropped.
#[derive(Debug)]
pub(crate) struct Task {
    stop: Stop,
}

impl Task {
    /// Starts thread `name` running `f`, which should return soon after
    /// its [`Stop`] is raised.
    pub(crate) fn spawn(name: &str, f: impl FnOnce(Stop) + Send + 'static) -> RedisResult<Task> {
        let stop = Stop::default();
        stop.spawn(name, f)?;
        Ok(Task { stop })
    }

    /// Asks the thread to stop (it ends at its next look at the flag).
    pub(crate) fn stop(&self) {
        self.stop.raise();
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_wakes_when_asked_to_stop() {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = Task::spawn("mredis-test", move |stop| {
            // Would sleep an hour; the stop wakes it.
            let asked = stop.wait(Duration::from_secs(3600));
            tx.send(asked).unwrap();
        })
        .unwrap();
        drop(task);
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        let stop = Stop::default();
        assert!(!stop.wait(Duration::from_millis(1)) && !stop.stopped());
        stop.raise();
        assert!(stop.stopped() && stop.wait(Duration::from_secs(3600)));
    }
}
