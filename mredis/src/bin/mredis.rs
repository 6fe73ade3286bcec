//! `mredis`: look at and reshape a fleet of Redis servers placed by mredis.
//!
//!     mredis locate --config fleet.toml KEY...
//!     mredis stats --config fleet.toml
//!     mredis rebalance --from old.toml --to new.toml [--dry-run] [--replace]
//!
//! Configurations are TOML files (see `mredis::builder_from_toml`), or a
//! twemproxy YAML file with `--pool NAME`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mredis::rebalance::{RebalanceOptions, rebalance};
use mredis::{MRedis, PerServer};

#[derive(Parser)]
#[command(
    name = "mredis",
    version,
    about = "Look at and reshape a fleet of Redis servers placed by mredis"
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
    Rebalance {
        /// The configuration the data was written with.
        #[arg(long)]
        from: String,
        /// The new configuration.
        #[arg(long)]
        to: String,
        /// Count what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Overwrite keys that already exist on their new server.
        #[arg(long)]
        replace: bool,
        /// Stop after moving this many keys (run again to continue).
        #[arg(long)]
        limit: Option<u64>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

fn open(path: &str, pool: Option<&str>) -> Result<MRedis, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let builder = match pool {
        Some(pool) => mredis::builder_from_twemproxy_yaml(&text, pool),
        None => mredis::builder_from_toml(&text),
    }
    .map_err(|e| format!("{path}: {e}"))?;
    builder.build().map_err(|e| format!("{path}: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Locate { config, pool, keys } => {
            let mr = open(&config, pool.as_deref())?;
            for key in keys {
                let server = mr.server_for(&key).map_err(|e| e.to_string())?;
                println!("{key}\t{server}");
            }
        }
        Command::Stats { config, pool } => {
            let mr = open(&config, pool.as_deref())?;
            let sizes: PerServer<u64> = mr.dbsize().map_err(|e| e.to_string())?;
            let total: u64 = sizes.values().sum();
            let n = sizes.len().max(1) as f64;
            println!("{:<40} {:>12} {:>8}", "server", "keys", "share");
            for (server, count) in &sizes {
                let share = if total == 0 {
                    0.0
                } else {
                    *count as f64 * 100.0 / total as f64
                };
                println!("{server:<40} {count:>12} {share:>7.2}%");
            }
            let max = sizes.values().copied().max().unwrap_or(0) as f64;
            let mean = total as f64 / n;
            let imbalance = if mean == 0.0 { 1.0 } else { max / mean };
            println!("{:<40} {total:>12}", "total");
            println!("imbalance (largest / mean): {imbalance:.3}");
        }
        Command::Rebalance {
            from,
            to,
            dry_run,
            replace,
            limit,
            quiet,
        } => {
            let old = open(&from, None)?;
            let new = open(&to, None)?;
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(0)
            };
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} keys scanned, {msg}").map_err(|e| e.to_string())?,
            );
            let progress_bar = bar.clone();
            let options = RebalanceOptions {
                dry_run,
                replace,
                limit,
                progress: Some(Box::new(move |p| {
                    progress_bar.set_length(p.total);
                    progress_bar.set_position(p.scanned);
                    progress_bar.set_message(format!("{} moved, scanning {}", p.moved, p.server));
                })),
                ..Default::default()
            };
            let report = rebalance(&old, &new, options).map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            let verb = if dry_run { "would move" } else { "moved" };
            println!("scanned {} keys, {verb} {}", report.scanned, report.moved);
            for ((a, b), n) in &report.moves {
                println!("  {a} -> {b}: {n}");
            }
            for c in &report.conflicts {
                println!(
                    "conflict: `{}` exists on {} and {}; both left (use --replace to overwrite)",
                    c.key, c.from, c.to
                );
            }
            if report.interrupted {
                println!("stopped at --limit; run again to continue");
            } else if !dry_run {
                println!("verification: {} keys away from their new server", report.misplaced);
                if report.misplaced > report.conflicts.len() as u64 {
                    return Err("verification failed: keys are not where the new configuration puts them".into());
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mredis: {e}");
            ExitCode::FAILURE
        }
    }
}
