//! Reloading a fleet file: [`watch_fleet_file`] (and
//! [`watch_fleet_file_async`]) watch a TOML fleet file (the format of
//! [`builder_from_toml`](crate::builder_from_toml), as the `mredis` tool
//! reads it) and [`reconfigure`](crate::MRedis::reconfigure) the client
//! each time its content changes, until the returned [`FleetWatch`] is
//! dropped.
//!
//! - **What counts as a change.** The file's directory is watched (with
//!   the `notify` crate: inotify on Linux, FSEvents or kqueue elsewhere),
//!   so a file replaced by a rename (as editors and deployment tools save)
//!   is seen as well as one written in place. On every event that touches
//!   the file, it is read; when its content differs from the last content
//!   seen (the content at the start counts as applied), it is parsed and
//!   applied.
//! - **Options the file has no field for** (timeouts, pool size, health
//!   checking, connection names) come from the `options` function of
//!   [`watch_fleet_file_with`], applied to every builder read from the
//!   file; without it, the [`Builder`] defaults.
//! - **A bad file** (unreadable, malformed, an invalid server list, a
//!   configuration the client refuses) is logged with `tracing` at the
//!   `error` level and kept as the watch's [`last_error`](FleetWatch::last_error);
//!   the fleet in force stays as it was. The message is
//!   [`error_text`](crate::error_text)'s, which never shows a password
//!   (the TOML errors name the line and never repeat the offending
//!   value). A later good content is applied as usual.
//!
//! ```no_run
//! # fn main() -> redis::RedisResult<()> {
//! let text = std::fs::read_to_string("/etc/app/fleet.toml")?;
//! let mr = mredis::builder_from_toml(&text)?.build()?;
//! let _watch = mredis::watch_fleet_file("/etc/app/fleet.toml", mr.clone())?;
//! // ... every clone of `mr` follows the file while `_watch` lives.
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redis::RedisResult;

use crate::config::Builder;
use crate::server::config_error;

/// Options for every builder read from the file (see the module docs).
type Options = Box<dyn Fn(Builder) -> Builder + Send + Sync>;

/// The client a watch reconfigures.
enum Client {
    Sync(crate::MRedis),
    Async(crate::async_client::MRedis, tokio::runtime::Handle),
}

/// What a watch has seen, shared with its event handler.
#[derive(Default)]
struct Seen {
    /// The content last read (applied, or refused).
    content: Option<Vec<u8>>,
    applied: u64,
    last_error: Option<String>,
}

/// A file watch started by [`watch_fleet_file`]; watching stops when it
/// is dropped (a reload under way finishes first).
pub struct FleetWatch {
    _watcher: notify::RecommendedWatcher,
    path: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for FleetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWatch")
            .field("path", &self.path)
            .field("applied", &self.applied())
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl FleetWatch {
    /// How many changes of the file were applied (the client reconfigured).
    pub fn applied(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).applied
    }

    /// The last change that was refused, in words (no password), if the
    /// last content read was refused; `None` once a good one is applied.
    pub fn last_error(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).last_error.clone()
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Watches the TOML fleet file at `path` and reconfigures `client` (and
/// so every clone of it) whenever its content changes; see the
/// [module docs](crate::watch). The file must exist. Options the file has
/// no field for are the [`Builder`] defaults: see [`watch_fleet_file_with`].
pub fn watch_fleet_file(path: impl AsRef<Path>, client: crate::MRedis) -> RedisResult<FleetWatch> {
    start(path.as_ref(), Client::Sync(client), Box::new(|b| b))
}

/// [`watch_fleet_file`] with `options` applied to every builder read from
/// the file (timeouts, pool size, health checking, connection names: what
/// the file has no field for).
///
/// ```no_run
/// # fn demo(mr: mredis::MRedis) -> redis::RedisResult<()> {
/// use std::time::Duration;
/// let _watch = mredis::watch_fleet_file_with("/etc/app/fleet.toml", mr, |b| {
///     b.connect_timeout(Duration::from_millis(500)).client_name("checkout")
/// })?;
/// # Ok(()) }
/// ```
pub fn watch_fleet_file_with(
    path: impl AsRef<Path>,
    client: crate::MRedis,
    options: impl Fn(Builder) -> Builder + Send + Sync + 'static,
) -> RedisResult<FleetWatch> {
    start(path.as_ref(), Client::Sync(client), Box::new(options))
}

/// [`watch_fleet_file_with`] for the async client. Call it inside a tokio
/// runtime: each reload's [`reconfigure`](crate::aio::MRedis::reconfigure)
/// runs on that runtime (awaited on the watcher's own thread), so drop the
/// watch before the runtime shuts down.
pub fn watch_fleet_file_async(
    path: impl AsRef<Path>,
    client: crate::async_client::MRedis,
    options: impl Fn(Builder) -> Builder + Send + Sync + 'static,
) -> RedisResult<FleetWatch> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| config_error("watch_fleet_file_async needs a tokio runtime".to_string()))?;
    start(path.as_ref(), Client::Async(client, handle), Box::new(options))
}

fn start(path: &Path, client: Client, options: Options) -> RedisResult<FleetWatch> {
    let shown = path.display().to_string();
    let initial =
        std::fs::read(path).map_err(|e| config_error(format!("fleet file `{shown}`: cannot read it: {e}")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| config_error(format!("fleet file `{shown}`: not a file name")))?
        .to_os_string();
    let seen = Arc::new(Mutex::new(Seen {
        content: Some(initial),
        ..Seen::default()
    }));
    let file = path.to_path_buf();
    let handler_seen = seen.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let touches = match &event {
            Ok(e) => !is_own_read(&e.kind) && e.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())),
            // The watcher lost events (an overflow): look at the file.
            Err(_) => true,
        };
        if touches {
            reload(&file, &client, &options, &handler_seen);
        }
    })
    .map_err(|e| config_error(format!("fleet file `{shown}`: cannot watch it: {e}")))?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| config_error(format!("fleet file `{shown}`: cannot watch its directory: {e}")))?;
    Ok(FleetWatch {
        _watcher: watcher,
        path: path.to_path_buf(),
        seen,
    })
}

/// Events of reading the file (ours among them), which change nothing.
fn is_own_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(a) if !matches!(a, AccessKind::Close(AccessMode::Write)))
}

/// Reads the file and, if its content changed, applies it; a failure is
/// logged and kept, and the fleet in force stays.
fn reload(file: &Path, client: &Client, options: &Options, seen: &Mutex<Seen>) {
    // One reload at a time (the lock is held across it): events come one
    // after another from the watcher's thread anyway.
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let content = match std::fs::read(file) {
        Ok(c) => c,
        // Gone for a moment (replaced by a rename): the event of its
        // arrival comes next.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            refused(&mut seen, file, &config_error(format!("cannot read it: {e}")));
            return;
        }
    };
    if seen.content.as_deref() == Some(&content[..]) {
        return;
    }
    seen.content = Some(content.clone());
    let result = std::str::from_utf8(&content)
        .map_err(|_| config_error("the file is not UTF-8".to_string()))
        .and_then(crate::builder_from_toml)
        .and_then(|builder| {
            let builder = options(builder);
            match client {
                Client::Sync(mr) => mr.reconfigure(builder),
                Client::Async(mr, rt) => rt.block_on(mr.reconfigure(builder)),
            }
        });
    match result {
        Ok(()) => {
            seen.applied += 1;
            seen.last_error = None;
            tracing::info!(path = %file.display(), "mredis: fleet file applied");
        }
        Err(e) => refused(&mut seen, file, &e),
    }
}

/// Logs and keeps a refused change (its text never shows a password).
fn refused(seen: &mut Seen, file: &Path, e: &redis::RedisError) {
    let text = crate::error_text(e);
    tracing::error!(
        path = %file.display(),
        error = %text,
        "mredis: fleet file not applied; the fleet in force stays"
    );
    seen.last_error = Some(text);
}
