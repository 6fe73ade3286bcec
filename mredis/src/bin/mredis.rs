//! `mredis`: look at and reshape a fleet of Redis servers placed by mredis.
//!
//!     mredis locate --config fleet.toml KEY...
//!     mredis stats --config fleet.toml
//!     mredis rebalance --from old.toml --to new.toml [--dry-run] [--prefer source|destination]
//!     mredis clients --config fleet.toml [--from old.toml]
//!
//! Configurations are TOML files (see `mredis::builder_from_toml`), or a
//! twemproxy YAML file with `--pool NAME`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mredis::rebalance::census::{Census, CensusOptions, FleetClient, Stage, is_refusal};
use mredis::rebalance::{Discard, Phase, Prefer, Progress, ProgressFn, RebalanceOptions, rebalance, take_census};
use mredis::{MRedis, PerServer};

#[derive(Parser)]
#[command(
    name = "mredis",
    version,
    about = "Look at and reshape a fleet of Redis servers placed by mredis",
    after_help = "Exit codes: 0 success; 1 error (the message names the server); 2 usage error, or for \
                  `rebalance`, conflicts or misplaced keys left; 3 for `rebalance` and `clients --from`, \
                  clients not migration-aware for the move are connected (see `mredis rebalance --help`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which server owns each key.
    Locate {
        /// Fleet configuration (TOML, or twemproxy YAML with --pool).
        #[arg(long)]
        config: String,
        /// twemproxy pool name, when --config is a nutcracker YAML file.
        #[arg(long)]
        pool: Option<String>,
        /// Keys to locate.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Keys per server, share and imbalance.
    Stats {
        /// Fleet configuration.
        #[arg(long)]
        config: String,
        /// twemproxy pool name.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Move every key whose owner changes from the --from to the --to configuration.
    #[command(after_help = REBALANCE_HELP)]
    Rebalance {
        /// The configuration the data was written with.
        #[arg(long)]
        from: String,
        /// The new configuration.
        #[arg(long)]
        to: String,
        /// twemproxy pool name, when --from and --to are nutcracker YAML files.
        #[arg(long)]
        pool: Option<String>,
        /// Count what would move, per pair of servers; move nothing (and do
        /// not look for conflicts).
        #[arg(long)]
        dry_run: bool,
        /// Resolve conflicts (a key with different contents on its old and
        /// its new server) by keeping this side's copy; every copy it
        /// discards is printed first.
        #[arg(long, value_enum)]
        prefer: Option<PreferArg>,
        /// Move keys to servers without persistence (save "" and appendonly
        /// no), or whose persistence cannot be read, anyway.
        #[arg(long)]
        allow_volatile: bool,
        /// Stop after moving about this many keys (run again to continue).
        #[arg(long)]
        limit: Option<u64>,
        /// MIGRATE timeout in milliseconds; a server silent for longer (plus
        /// a margin) is reported as an error.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Keys per MIGRATE; lower it for very large values (each MIGRATE
        /// blocks the source server while it runs).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        batch_size: u64,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
        /// The journal of MIGRATE batches in flight (default:
        /// `.mredis-rebalance-<id>.journal` in the current directory, one per
        /// pair of configurations). Run again from the same directory after
        /// an interruption; it is removed once nothing is left to do.
        #[arg(long)]
        journal: Option<std::path::PathBuf>,
        /// Wait up to this many seconds for clients that are not
        /// migration-aware for this move to go (or to reconfigure), instead
        /// of refusing at once.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Refuse to move while connections that are not mredis clients
        /// (redis-cli, other libraries) are connected (default: a warning).
        #[arg(long)]
        refuse_unknown: bool,
        /// An ACL user the application's mredis clients log in as
        /// (repeatable): an unnamed connection of it whose ACL refuses
        /// CLIENT SETNAME counts as a possible old client. The users in
        /// either configuration's server URLs are counted without it.
        #[arg(long, value_name = "USER")]
        client_user: Vec<String>,
        /// Move without the census of connected clients.
        #[arg(long)]
        skip_census: bool,
    },
    /// Who is connected to the fleet, and with which configuration (the
    /// census `rebalance` takes before it moves anything).
    Clients {
        /// Fleet configuration.
        #[arg(long)]
        config: String,
        /// The configuration a move would start from: classifies the
        /// clients for the move from it to --config (exit 3 if any is in
        /// the way), and asks its servers too.
        #[arg(long)]
        from: Option<String>,
        /// twemproxy pool name.
        #[arg(long)]
        pool: Option<String>,
    },
}

const REBALANCE_HELP: &str = "\
Exit codes:
  0  every key is on its new server, none is on two servers, no conflicts
     (--dry-run: the counts were printed)
  1  error: the message names the server and says whether running again is
     safe (it is, for errors while moving keys)
  2  conflicts or misplaced keys are left; they are listed (run again, or
     pick a side with --prefer); usage errors also exit 2, with clap's message
  3  clients that are not migration-aware for this move are connected
     (listed with address, name and configuration): before moving, nothing
     was moved; before the final verification, keys were moved but such a
     client connected meanwhile. Reconfigure or stop them and run again,
     or use --wait SECONDS. Connections that are not mredis clients are a
     warning, refused with --refuse-unknown.

Before anything moves, and again before the final verification, the tool
reads CLIENT LIST on every server of both configurations (the census; see
`mredis clients`). Every mredis connection is named after its
configuration, so only clients migration-aware for exactly this move may be
connected. After a verified move it leaves a marker on the new servers:
migration-aware clients stop their migration checks within about a second.

Keys that exist on both their old and new server with different contents
(conflicts) are kept on both and listed, never overwritten, unless --prefer
says which copy wins. Byte-identical copies (left by a MIGRATE that timed
out) are resolved silently.";

#[derive(Clone, Copy, clap::ValueEnum)]
enum PreferArg {
    /// Keep the copy on the old server (MIGRATE REPLACE to the new one).
    Source,
    /// Keep the copy on the new server (DEL on the old one).
    Destination,
}

/// What a run ended with, for the exit code.
enum Outcome {
    Done,
    Incomplete,
    /// The census found clients in the way.
    NotReady,
}

fn open(path: &str, pool: Option<&str>) -> Result<MRedis, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let yaml = path.ends_with(".yml") || path.ends_with(".yaml");
    let builder = match pool {
        Some(pool) => mredis::builder_from_twemproxy_yaml(&text, pool),
        None if yaml => {
            return Err(format!(
                "{path} looks like a twemproxy YAML file: --pool NAME is needed to pick its pool"
            ));
        }
        None => mredis::builder_from_toml(&text),
    }
    .map_err(|e| format!("{path}: {}", message(&e)))?;
    builder.build().map_err(|e| format!("{path}: {}", message(&e)))
}

/// An error's text in words on one line, without a leading `mredis: `
/// (`main` adds it): an mredis error's own sentence (without its category,
/// `rebalance refused`, `invalid configuration`, which the sentence says),
/// otherwise [`mredis::error_text`] (a server's reply as `CODE text`).
fn message(e: &redis::RedisError) -> String {
    let general = |d: &str| e.to_string().ends_with(&format!(" - {:?}: {d}", e.kind()));
    let text = match e.detail() {
        Some(detail) if general(detail) => detail.to_string(),
        _ => mredis::error_text(e),
    };
    text.strip_prefix("mredis: ").map(str::to_string).unwrap_or(text)
}

/// `mredis stats`: keys per server. A server listed under several names
/// (`127.0.0.1:6379` and `localhost:6379`: the same `run_id` and database)
/// is counted once, under its first name; the others say whose copy they
/// are.
fn stats(mr: &MRedis) -> Result<(), String> {
    let sizes: PerServer<u64> = mr.dbsize().map_err(|e| message(&redis::RedisError::from(e)))?;
    // The same server under two names: INFO's run_id (as rebalance does).
    // A server that does not say is taken as distinct.
    let ids: Vec<Option<String>> = match mr.query_all::<String>(redis::cmd("INFO").arg("server")) {
        Ok(infos) => infos
            .values()
            .map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(|id| id.trim().to_string())
            })
            .collect(),
        Err(_) => vec![None; sizes.len()],
    };
    let dbs: Vec<i64> = mr.servers().iter().map(|s| s.db()).collect();
    let names: Vec<&str> = sizes.names().collect();
    // For each entry, the earlier entry that is the same server, if any.
    let same_as: Vec<Option<usize>> = (0..names.len())
        .map(|i| (0..i).find(|&j| ids[i].is_some() && ids[i] == ids[j] && dbs[i] == dbs[j]))
        .collect();
    let counted: Vec<u64> = sizes
        .values()
        .zip(&same_as)
        .filter(|(_, same)| same.is_none())
        .map(|(n, _)| *n)
        .collect();
    let total: u64 = counted.iter().sum();
    let n = counted.len().max(1) as f64;
    println!("{:<40} {:>12} {:>8}", "server", "keys", "share");
    for (i, (server, count)) in sizes.iter().enumerate() {
        match same_as[i] {
            Some(j) => println!(
                "{server:<40} {count:>12}  same server as {}, not counted again",
                names[j]
            ),
            None => {
                let share = if total == 0 {
                    0.0
                } else {
                    *count as f64 * 100.0 / total as f64
                };
                println!("{server:<40} {count:>12} {share:>7.2}%");
            }
        }
    }
    let max = counted.iter().copied().max().unwrap_or(0) as f64;
    let mean = total as f64 / n;
    let imbalance = if mean == 0.0 { 1.0 } else { max / mean };
    println!("{:<40} {total:>12}", "total");
    println!("imbalance (largest / mean): {imbalance:.3}");
    for (i, same) in same_as.iter().enumerate() {
        if let Some(j) = same {
            eprintln!(
                "mredis: warning: {} and {} are the same server (same run_id and database); its keys are counted once",
                names[*j], names[i]
            );
        }
    }
    shards(mr);
    Ok(())
}

/// The shards with replicas or Sentinel: each one's primary now, its
/// replicas with how far each is behind (the primary's replication offset
/// minus the replica's, in bytes, and its last ack in seconds), and the
/// last failover the client followed; then each node's latency as the
/// `lowest-latency` read policy measures it.
fn shards(mr: &MRedis) {
    let servers = mr.servers();
    if servers
        .iter()
        .all(|s| s.replica_addresses().is_empty() && s.last_failover().is_none())
    {
        return;
    }
    // Measured while the rest is asked for.
    mr.probe_latencies();
    let probing = Instant::now();
    let infos: PerServer<String> = match mr.query_all::<String>(redis::cmd("INFO").arg("replication")) {
        Ok(all) => all,
        Err(e) => e.succeeded().clone(),
    };
    println!();
    println!(
        "{:<24} {:<22} replicas (offset lag in bytes, last ack)",
        "shard", "primary"
    );
    for server in &servers {
        let info = infos.get(server.name()).cloned().unwrap_or_default();
        let field = |line: &str, name: &str| {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
        };
        let master_offset: Option<i64> = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .and_then(|v| v.trim().parse().ok());
        let replicas: Vec<String> = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains(":ip="))
            .map(|l| {
                // slave0:ip=127.0.0.1,port=7001,state=online,offset=123,lag=0
                let l = l.split_once(':').map_or(l, |x| x.1);
                let (ip, port) = (field(l, "ip"), field(l, "port"));
                let offset: Option<i64> = field(l, "offset").and_then(|v| v.parse().ok());
                let lag = match (master_offset, offset) {
                    (Some(m), Some(o)) => format!("{}", m - o),
                    _ => "?".to_string(),
                };
                format!(
                    "{}:{} ({lag} B, {} s, {})",
                    ip.unwrap_or_default(),
                    port.unwrap_or_default(),
                    field(l, "lag").unwrap_or_else(|| "?".to_string()),
                    field(l, "state").unwrap_or_else(|| "?".to_string())
                )
            })
            .collect();
        let failover = server
            .last_failover()
            .map(|f| {
                format!(
                    "; last failover {} -> {}",
                    f.from.unwrap_or_else(|| "?".to_string()),
                    f.to
                )
            })
            .unwrap_or_default();
        println!(
            "{:<24} {:<22} {}{failover}",
            server.name(),
            server.primary_address().unwrap_or_else(|| "unknown".to_string()),
            if replicas.is_empty() {
                "none".to_string()
            } else {
                replicas.join(", ")
            }
        );
    }
    latencies(&servers, probing);
}

/// Each shard node's smoothed PING round trip. Waits for the prober's
/// first round (each node measured, or given its 1 s deadline), at most
/// 3 s from `since`.
fn latencies(servers: &[mredis::Server], since: Instant) {
    let measured = || {
        servers
            .iter()
            .all(|s| s.latencies().iter().all(|n| n.estimate.is_some()))
    };
    while !measured() && since.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!();
    println!("{:<24} {:<22} {:<8} latency (smoothed PING)", "shard", "node", "role");
    for server in servers {
        for node in server.latencies() {
            println!(
                "{:<24} {:<22} {:<8} {}",
                server.name(),
                node.node,
                if node.primary { "primary" } else { "replica" },
                node.estimate.map_or_else(
                    || "not answering".to_string(),
                    |d| format!("{:.3} ms", d.as_secs_f64() * 1000.0)
                )
            );
        }
    }
}

/// Progress output: a bar on a terminal, a plain line every 2 s otherwise.
/// Rates and ETA count from the start of the current phase.
fn progress_reporter(quiet: bool, dry_run: bool) -> (ProgressBar, ProgressFn) {
    if quiet {
        return (ProgressBar::hidden(), Box::new(|_| {}));
    }
    let verb = if dry_run { "would move" } else { "moved" };
    let mut phase: Option<Phase> = None;
    let mut phase_start = Instant::now();
    let mut describe = move |p: &Progress| -> (bool, String, f64) {
        let changed = phase != Some(p.phase);
        if changed {
            phase = Some(p.phase);
            phase_start = Instant::now();
        }
        let secs = phase_start.elapsed().as_secs_f64().max(0.001);
        let text = match p.phase {
            Phase::Checking => format!("checking servers ({} keys would move so far)", p.moved),
            Phase::Moving => format!("{verb} {} ({:.0} keys/s)", p.moved, p.moved as f64 / secs),
            Phase::Resolving => format!("{verb} {}, resolving conflicts", p.moved),
            Phase::Verifying => format!("{verb} {}, verifying", p.moved),
            _ => format!("{verb} {}", p.moved),
        };
        (changed, text, secs)
    };
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} {bar:30} {pos}/{len} keys scanned, {msg}, ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("connecting");
        let b = bar.clone();
        let callback = Box::new(move |p: &Progress| {
            let (changed, text, _) = describe(p);
            if changed {
                b.reset_eta();
            }
            b.set_length(p.total);
            b.set_position(p.scanned.min(p.total));
            b.set_message(text);
        });
        (bar, callback)
    } else {
        let mut last: Option<Instant> = None;
        let callback = Box::new(move |p: &Progress| {
            let (_, text, secs) = describe(p);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
                return;
            }
            last = Some(Instant::now());
            let eta = if p.scanned == 0 || p.scanned >= p.total || p.phase == Phase::Verifying {
                String::new()
            } else {
                let left = (p.total - p.scanned) as f64 * secs / p.scanned as f64;
                format!(", ETA {left:.0} s")
            };
            eprintln!("rebalance: {}/{} keys scanned, {text}{eta}", p.scanned, p.total);
        });
        (ProgressBar::hidden(), callback)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_rebalance(
    from: &str,
    to: &str,
    pool: Option<&str>,
    dry_run: bool,
    prefer: Option<PreferArg>,
    allow_volatile: bool,
    limit: Option<u64>,
    timeout_ms: u64,
    batch_size: usize,
    quiet: bool,
    journal: Option<std::path::PathBuf>,
    census: CensusArgs,
) -> Result<Outcome, String> {
    let old = open(from, pool)?;
    let new = open(to, pool)?;
    let census_options = CensusOptions {
        refuse_unknown: census.refuse_unknown,
        wait: census.wait.map(Duration::from_secs),
        client_users: census.client_users,
    };
    if let (Some(wait), false, false) = (census_options.wait, census.skip, dry_run) {
        // --wait: say once who is waited for, then take the census every
        // second until they are gone (the rebalance takes it once more).
        let deadline = Instant::now() + wait;
        let mut said = false;
        loop {
            let now = take_census(&old, &new).map_err(|e| message(&e))?;
            let blocking = now.in_the_way(Stage::BeforeMove, &census_options);
            if blocking.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                println!(
                    "clients not ready after --wait {}: {} connections are not migration-aware for this move \
                     (nothing was moved):{}",
                    wait.as_secs(),
                    blocking.len(),
                    Census::describe(&blocking)
                );
                return Ok(Outcome::NotReady);
            }
            if !said {
                eprintln!(
                    "rebalance: waiting up to {} s for {} connections that are not migration-aware for this move:{}",
                    wait.as_secs(),
                    blocking.len(),
                    Census::describe(&blocking)
                );
                said = true;
            }
            std::thread::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())));
        }
    }
    let journal = journal.unwrap_or_else(|| {
        // One journal per pair of server lists, found again by a rerun.
        let mut id = String::new();
        for s in old.servers().iter().chain(&new.servers()) {
            id.push_str(s.name());
            id.push('\n');
        }
        std::path::PathBuf::from(format!(
            ".mredis-rebalance-{:08x}.journal",
            crc32fast::hash(id.as_bytes())
        ))
    });
    let (bar, progress) = progress_reporter(quiet, dry_run);
    let discard_bar = bar.clone();
    let options = RebalanceOptions {
        dry_run,
        prefer: prefer.map(|p| match p {
            PreferArg::Source => Prefer::Source,
            PreferArg::Destination => Prefer::Destination,
        }),
        allow_volatile,
        limit,
        migrate_timeout_ms: Some(timeout_ms),
        batch_size: Some(batch_size),
        journal: Some(journal),
        progress: Some(progress),
        before_discard: Some(Box::new(move |discards: &[Discard]| {
            discard_bar.suspend(|| {
                println!("--prefer: discarding {} copies:", discards.len());
                for d in discards {
                    println!(
                        "  discarding `{}` on {} (keeping the copy on {})",
                        d.key, d.discarded_from, d.kept
                    );
                }
                let _ = std::io::stdout().flush();
            });
        })),
        skip_census: census.skip,
        census: census_options.clone(),
        ..Default::default()
    };
    let result = rebalance(&old, &new, options);
    bar.finish_and_clear();
    let report = match result {
        Err(e) if is_refusal(&e) => {
            println!("{}", message(&e));
            return Ok(Outcome::NotReady);
        }
        r => r.map_err(|e| message(&e))?,
    };
    let unknown: Vec<&FleetClient> = report
        .census
        .iter()
        .chain(&report.census_after)
        .flat_map(|c| c.unknown())
        .collect();
    if let (true, Some(first)) = (dry_run, &report.census) {
        let blocking = first.in_the_way(Stage::BeforeMove, &census_options);
        if !blocking.is_empty() {
            println!(
                "would refuse: {} connections are not migration-aware for this move:{}",
                blocking.len(),
                Census::describe(&blocking)
            );
        }
    }
    if !unknown.is_empty() {
        println!(
            "warning: {} connections are not mredis clients (--refuse-unknown refuses them):{}",
            unknown.len(),
            Census::describe(&unknown)
        );
    }
    for names in &report.same_server {
        println!(
            "same server under several names: {} (nothing moves between them)",
            names.join(" = ")
        );
    }
    for v in &report.volatile {
        if dry_run {
            println!("would refuse without --allow-volatile: {v}");
        } else {
            println!("warning: moved keys to a server without persistence (--allow-volatile): {v}");
        }
    }
    let verb = if dry_run { "would move" } else { "moved" };
    println!(
        "scanned {} keys (of {}), {verb} {}",
        report.scanned, report.keys, report.moved
    );
    for ((a, b), n) in &report.moves {
        println!("  {a} -> {b}: {n}");
    }
    if report.retries > 0 {
        println!(
            "retried {} times after a MIGRATE timed out while both servers still answered",
            report.retries
        );
    }
    if report.leftovers > 0 {
        println!(
            "resolved {} identical copies left on two servers by a MIGRATE that timed out",
            report.leftovers
        );
    }
    for d in &report.discarded {
        println!(
            "discarded `{}` on {} (kept the copy on {})",
            d.key, d.discarded_from, d.kept
        );
    }
    for c in &report.conflicts {
        println!(
            "conflict: `{}` differs on {} (old) and {} (new); both copies kept",
            c.key, c.from, c.to
        );
    }
    if !report.conflicts.is_empty() {
        println!(
            "{} conflicts: keep both (default), or run again with --prefer source|destination",
            report.conflicts.len()
        );
    }
    if dry_run {
        return Ok(Outcome::Done);
    }
    if report.interrupted {
        println!("stopped at --limit; run again to continue");
    }
    println!("verification: {} keys away from their new server", report.misplaced);
    for m in &report.misplaced_keys {
        let both = if m.on_both {
            " (it is on both: conflict)"
        } else {
            " (run again to move it)"
        };
        println!("  misplaced: `{}` on {}, belongs on {}{both}", m.key, m.on, m.owner);
    }
    if report.misplaced > report.misplaced_keys.len() as u64 {
        println!(
            "  ... and {} more",
            report.misplaced - report.misplaced_keys.len() as u64
        );
    }
    if report.finished {
        println!("finished: migration-aware clients of this move stop their migration checks within about a second");
    }
    for refused in &report.fence_refused {
        println!(
            "warning: no fence on {refused}: a client of the old configuration that connects there is not refused"
        );
    }
    Ok(if report.is_complete() {
        Outcome::Done
    } else {
        Outcome::Incomplete
    })
}

/// The census options of `rebalance`.
struct CensusArgs {
    wait: Option<u64>,
    refuse_unknown: bool,
    skip: bool,
    client_users: Vec<String>,
}

/// `mredis clients`: the census alone.
fn clients(config: &str, from: Option<&str>, pool: Option<&str>) -> Result<Outcome, String> {
    let to = open(config, pool)?;
    let old = match from {
        Some(path) => open(path, pool)?,
        None => to.clone(),
    };
    let census = take_census(&old, &to).map_err(|e| message(&e))?;
    if from.is_some() {
        println!("move {} -> {}", census.from, census.to);
    } else {
        println!("configuration {}", census.to);
    }
    let all: Vec<&FleetClient> = census.clients.iter().collect();
    println!("{} client connections:{}", all.len(), Census::describe(&all));
    if from.is_none() {
        return Ok(Outcome::Done);
    }
    let blocking = census.in_the_way(Stage::BeforeMove, &CensusOptions::default());
    if blocking.is_empty() {
        println!("ready: every mredis client is migration-aware for this move");
        Ok(Outcome::Done)
    } else {
        println!(
            "not ready: {} connections are not migration-aware for this move:{}",
            blocking.len(),
            Census::describe(&blocking)
        );
        Ok(Outcome::NotReady)
    }
}

fn run(cli: Cli) -> Result<Outcome, String> {
    match cli.command {
        Command::Locate { config, pool, keys } => {
            let mr = open(&config, pool.as_deref())?;
            for key in keys {
                let server = mr.server_for(&key).map_err(|e| message(&e))?;
                println!("{key}\t{server}");
            }
        }
        Command::Stats { config, pool } => {
            let mr = open(&config, pool.as_deref())?;
            stats(&mr)?;
        }
        Command::Rebalance {
            from,
            to,
            pool,
            dry_run,
            prefer,
            allow_volatile,
            limit,
            timeout_ms,
            batch_size,
            quiet,
            journal,
            wait,
            refuse_unknown,
            client_user,
            skip_census,
        } => {
            return run_rebalance(
                &from,
                &to,
                pool.as_deref(),
                dry_run,
                prefer,
                allow_volatile,
                limit,
                timeout_ms,
                batch_size as usize,
                quiet,
                journal,
                CensusArgs {
                    wait,
                    refuse_unknown,
                    skip: skip_census,
                    client_users: client_user,
                },
            );
        }
        Command::Clients { config, from, pool } => return clients(&config, from.as_deref(), pool.as_deref()),
    }
    Ok(Outcome::Done)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Incomplete) => ExitCode::from(2),
        Ok(Outcome::NotReady) => ExitCode::from(3),
        Err(e) => {
            let e = e.strip_prefix("mredis: ").unwrap_or(&e);
            eprintln!("mredis: {e}");
            ExitCode::FAILURE
        }
    }
}
