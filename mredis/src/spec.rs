//! The command table as data, generated from `commands.toml`: what each
//! Redis command is and how mredis routes it.

/// How a command is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteClass {
    /// Sent to the server that owns its key.
    Key,
    /// Sent to every server; one result per server.
    All,
    /// Keys grouped by server, one command per server, replies merged.
    Multi,
    /// All keys must live on one server.
    Colocated,
    /// No method exists.
    Omitted,
}

/// One row of `commands.toml`.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Redis name, upper case; subcommands as `"CLIENT LIST"`.
    pub name: &'static str,
    /// Redis command group (`string`, `list`, ...).
    pub group: &'static str,
    /// How it is routed.
    pub class: RouteClass,
    /// One-line summary.
    pub summary: &'static str,
    /// First server version with the command, for commands newer than 7.0.
    pub since: Option<&'static str>,
    /// Why no method exists (omitted commands only).
    pub reason: Option<&'static str>,
    /// The cargo feature of mredis its methods need (`"bloom"`,
    /// `"vector-sets"`); the row is listed here either way.
    pub feature: Option<&'static str>,
    /// `All` rows: how the servers' replies combine into one on a routed
    /// handle ([`MRedis::get_connection`](crate::MRedis::get_connection)),
    /// where redis-rs code expects one reply. The generated methods return
    /// one result per server whatever this says.
    pub reply: Option<Reply>,
    /// Where the server finds the command's keys (the `key_spec` field);
    /// [`CommandSpec::keys`] reads them from an invocation.
    pub key_spec: KeySpec,
    /// Whether the server flags the command read-only or write (the
    /// `access` field).
    pub access: Access,
    /// Whether the command can block and where its block time is (the
    /// `block` field); [`CommandSpec::block_time`] reads it from an
    /// invocation.
    pub block: Option<Block>,
    /// Whether a client-side cache ([`Builder::client_cache`](crate::Builder::client_cache))
    /// may keep its replies (the `cacheable` field): reads of one key
    /// whose reply depends on nothing but the key's value.
    pub cacheable: bool,
    /// The generated methods.
    pub methods: &'static [MethodSpec],
}

/// Where the server finds a command's keys (the `key_spec` field of
/// `commands.toml`). Positions count the command name as argument 0; on
/// subcommand rows (`OBJECT ENCODING`) argument 1 is the subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySpec {
    /// The command has no keys (PING, DBSIZE).
    Keyless,
    /// Fixed positions, as `COMMAND`'s legacy key spec: the argument at
    /// `first`, then every `step`-th one up to `last` (negative: counted
    /// from the end, -1 being the last argument). GET is `1, 1, 1`, MSET
    /// `1, -1, 2`, BLPOP `1, -2, 1`.
    Range {
        /// Position of the first key.
        first: usize,
        /// Position of the last key; negative counts from the end.
        last: isize,
        /// Distance between keys (2 for key/value pairs).
        step: usize,
    },
    /// The argument at `count_at` is the number of keys, which follow it, one
    /// every `step` arguments (EVAL: count at 2; ZUNION: at 1; MSETEX: at 1,
    /// step 2). `dest` is one more key before the count (ZUNIONSTORE's
    /// destination at 1).
    NumKeys {
        /// Position of the count.
        count_at: usize,
        /// Distance between the counted keys (2 for key/value pairs).
        step: usize,
        /// Position of a key before the count, if there is one.
        dest: Option<usize>,
    },
    /// No key: the command is routed by the channel at this position
    /// (PUBLISH, SPUBLISH).
    Channel(usize),
    /// Where the keys are depends on the arguments in a way the table does
    /// not express (SORT ... STORE, MIGRATE ... KEYS, XREAD ... STREAMS):
    /// ask a server (`COMMAND GETKEYS`).
    AskServer,
}

/// Whether a command reads or writes, as the server's `COMMAND` flags say
/// (the `access` field of `commands.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Access {
    /// Flagged neither `readonly` nor `write` (PING, CLIENT LIST, EVAL).
    Neither,
    /// Flagged `readonly` (GET, EVAL_RO): a replica may answer it.
    Read,
    /// Flagged `write` (SET, DEL).
    Write,
}

/// How a blocking command says how long it blocks (the `block` field of
/// `commands.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Where the block time is.
    pub at: BlockAt,
    /// Its unit.
    pub unit: TimeUnit,
}

/// Where a blocking command's block time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockAt {
    /// The argument at this position; negative counts from the end (-1 is
    /// the last argument: BLPOP, WAIT).
    Index(isize),
    /// The argument after the word `word` (any case), looked for only
    /// before the word `until` when given (XREAD's `BLOCK ms` before
    /// `STREAMS`). Without the word the command does not block.
    After {
        /// The word before the block time (`"BLOCK"`).
        word: &'static str,
        /// The word that ends the search (`"STREAMS"`).
        until: Option<&'static str>,
    },
}

/// The unit of a block time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeUnit {
    /// Seconds; fractions allowed (`0.5`), as BLPOP reads them.
    Seconds,
    /// Whole milliseconds, as XREAD's BLOCK and WAIT read them.
    Milliseconds,
}

/// The keys of one invocation, as [`CommandSpec::keys`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandKeys<'a> {
    /// The keys, in argument order (the channel for PUBLISH and SPUBLISH;
    /// empty for keyless commands).
    Known(Vec<&'a [u8]>),
    /// The table cannot tell: ask a server (`COMMAND GETKEYS`).
    AskServer,
    /// The key count is not a number, is negative, or names more keys than
    /// there are arguments: the server rejects the command.
    BadCount,
}

impl CommandSpec {
    /// The keys of an invocation of this command (`args[0]` is the command
    /// name; on subcommand rows `args[1]` is the subcommand), read by the
    /// table's [`key_spec`](CommandSpec::key_spec). Fixed positions past the
    /// end of `args` give no key there (the server rejects such a command
    /// for its arity); a count of 0 gives no keys. Never panics.
    pub fn keys<'a>(&self, args: &[&'a [u8]]) -> CommandKeys<'a> {
        match self.key_spec {
            KeySpec::Keyless => CommandKeys::Known(Vec::new()),
            KeySpec::AskServer => CommandKeys::AskServer,
            KeySpec::Channel(at) => CommandKeys::Known(args.get(at).copied().into_iter().collect()),
            KeySpec::Range { first, last, step } => {
                let last = if last < 0 {
                    match args.len().checked_sub(last.unsigned_abs()) {
                        Some(l) => l,
                        None => return CommandKeys::Known(Vec::new()),
                    }
                } else {
                    last as usize
                };
                let keys = args
                    .iter()
                    .enumerate()
                    .skip(first)
                    .take_while(|(i, _)| *i <= last)
                    .step_by(step.max(1))
                    .map(|(_, k)| *k)
                    .collect();
                CommandKeys::Known(keys)
            }
            KeySpec::NumKeys { count_at, step, dest } => {
                let Some(count) = args.get(count_at).and_then(|c| parse_count(c)) else {
                    return CommandKeys::BadCount;
                };
                let step = step.max(1);
                // The counted keys (and, with step 2, their values) must all
                // be there.
                let fits = count
                    .checked_mul(step)
                    .and_then(|n| n.checked_add(count_at))
                    .is_some_and(|end| end < args.len());
                if !fits {
                    return CommandKeys::BadCount;
                }
                let mut keys: Vec<&'a [u8]> = dest.and_then(|d| args.get(d)).copied().into_iter().collect();
                keys.extend(args[count_at + 1..].iter().step_by(step).take(count).copied());
                CommandKeys::Known(keys)
            }
        }
    }

    /// How long an invocation of this command may block (`args[0]` is the
    /// command name): `None` if it does not block (the command cannot
    /// block, an optional `BLOCK` is absent, or the block time is not a
    /// valid, non-negative number, which the server rejects), `Some(ZERO)`
    /// if it blocks until it is answered. Never panics.
    pub fn block_time(&self, args: &[&[u8]]) -> Option<std::time::Duration> {
        let block = self.block?;
        let value = match block.at {
            BlockAt::Index(i) => {
                let at = if i < 0 {
                    args.len().checked_sub(i.unsigned_abs())?
                } else {
                    i as usize
                };
                if at == 0 {
                    return None;
                }
                *args.get(at)?
            }
            BlockAt::After { word, until } => {
                let mut found = None;
                let mut i = 1;
                while i < args.len() {
                    let arg = args[i];
                    if until.is_some_and(|u| arg.eq_ignore_ascii_case(u.as_bytes())) {
                        break;
                    }
                    if arg.eq_ignore_ascii_case(word.as_bytes()) {
                        // The last one counts, as the server reads options.
                        found = Some(*args.get(i + 1)?);
                        i += 1;
                    }
                    i += 1;
                }
                found?
            }
        };
        let text = std::str::from_utf8(value).ok()?;
        match block.unit {
            TimeUnit::Seconds => {
                let secs: f64 = text.parse().ok()?;
                if !secs.is_finite() || secs < 0.0 {
                    return None;
                }
                std::time::Duration::try_from_secs_f64(secs).ok()
            }
            TimeUnit::Milliseconds => {
                if text.starts_with('+') {
                    return None;
                }
                text.parse::<u64>().ok().map(std::time::Duration::from_millis)
            }
        }
    }
}

/// A key count as the server reads it: decimal digits, no sign.
fn parse_count(arg: &[u8]) -> Option<usize> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// How the replies of a command sent to every server combine into one reply
/// on a routed handle (the `reply` field of `commands.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reply {
    /// Integers added up (DBSIZE, PUBSUB NUMPAT).
    Sum,
    /// Arrays concatenated, text joined line by line (KEYS, CLIENT LIST).
    Concat,
    /// Every server must succeed; the first server's reply (FLUSHDB, SAVE).
    AllOk,
    /// One server's success is enough (SCRIPT KILL: the others answer
    /// NOTBUSY); fails only when every server failed.
    OneOk,
    /// The first reply that is not nil, in server order (RANDOMKEY).
    First,
    /// Arrays of 0/1 and-ed element by element (SCRIPT EXISTS).
    And,
    /// Name/count pairs with the counts added up by name (PUBSUB NUMSUB).
    SumPairs,
    /// Every server must give the same answer (COMMAND COUNT); a
    /// disagreement is an error that says to ask each server.
    Same,
    /// A map of server name (`host:port:db`) to that server's reply (INFO,
    /// CONFIG GET, LASTSAVE).
    PerServer,
}

/// One generated method.
#[derive(Debug, Clone, Copy)]
pub struct MethodSpec {
    /// Method name.
    pub name: &'static str,
    /// Its signature as written in the table.
    pub signature: &'static str,
    /// The arguments holding keys.
    pub key_args: &'static [&'static str],
    /// Its fixed return type (`"Option<isize>"`), if it has one instead of
    /// the caller's choice (`RV`).
    pub returns: Option<&'static str>,
    /// `Multi` rows: how many arguments after the command name make one
    /// key's share (1 for MGET and DEL, 2 for MSET's key/value pairs).
    pub stride: Option<usize>,
    /// `Multi` rows: how the servers' replies are merged.
    pub merge: Option<Merge>,
}

/// How the replies of a scatter-gather (`Multi`) command are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Merge {
    /// One array in the caller's key order (MGET).
    Ordered,
    /// Integer replies added up (DEL, EXISTS, UNLINK, TOUCH).
    Sum,
    /// Every server answered OK (MSET).
    Ok,
}

/// An example invocation of a routed method (from the table's `example`
/// field): the command it sends and the keys mredis routes it by.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// Redis command name.
    pub command: &'static str,
    /// Method name.
    pub method: &'static str,
    /// Builds (routed keys, command).
    pub build: fn() -> (Vec<Vec<u8>>, redis::Cmd),
}

mredis_macros::command_table!();

/// The table's row for a command (upper-case name) and, for container
/// commands (`CLIENT LIST`), its subcommand (any case).
pub(crate) fn lookup(name: &str, sub: Option<&str>) -> Option<&'static CommandSpec> {
    use std::collections::HashMap;
    static BY_NAME: std::sync::LazyLock<HashMap<&'static str, &'static CommandSpec>> =
        std::sync::LazyLock::new(|| COMMANDS.iter().map(|c| (c.name, c)).collect());
    // The commands with subcommand rows (CLIENT, CONFIG, ...): only for
    // those is the second argument part of the name.
    static CONTAINERS: std::sync::LazyLock<std::collections::HashSet<&'static str>> = std::sync::LazyLock::new(|| {
        COMMANDS
            .iter()
            .filter_map(|c| Some(c.name.split_once(' ')?.0))
            .collect()
    });
    if let Some(sub) = sub
        && CONTAINERS.contains(name)
    {
        let full = format!("{name} {}", sub.to_ascii_uppercase());
        if let Some(c) = BY_NAME.get(full.as_str()) {
            return Some(c);
        }
    }
    BY_NAME.get(name).copied()
}

/// Example invocations of routed methods, for the routing test (feature
/// `table-examples`; not part of the API).
#[cfg(feature = "table-examples")]
#[doc(hidden)]
pub mod examples {
    mredis_macros::command_examples!();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(name: &str) -> &'static CommandSpec {
        COMMANDS.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn lookup_reads_a_subcommand_only_for_commands_that_have_them() {
        assert_eq!(lookup("GET", Some("client")).map(|c| c.name), Some("GET"));
        assert_eq!(lookup("GET", None).map(|c| c.name), Some("GET"));
        assert_eq!(lookup("CLIENT", Some("list")).map(|c| c.name), Some("CLIENT LIST"));
        assert_eq!(lookup("CONFIG", Some("GET")).map(|c| c.name), Some("CONFIG GET"));
        assert_eq!(lookup("CLIENT", Some("no-such-subcommand")).map(|c| c.name), None);
        assert_eq!(lookup("CLIENT", None).map(|c| c.name), None);
        assert_eq!(lookup("NOSUCH", Some("list")).map(|c| c.name), None);
    }

    fn args(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    fn keys(name: &str, line: &str) -> CommandKeys<'static> {
        let line: &'static str = Box::leak(line.to_string().into_boxed_str());
        row(name).keys(&args(line))
    }

    fn known(list: &[&'static str]) -> CommandKeys<'static> {
        CommandKeys::Known(list.iter().map(|k| k.as_bytes()).collect())
    }

    #[test]
    fn fixed_positions() {
        assert_eq!(keys("GET", "GET k"), known(&["k"]));
        assert_eq!(keys("MSET", "MSET a 1 b 2"), known(&["a", "b"]));
        assert_eq!(keys("DEL", "DEL a b c"), known(&["a", "b", "c"]));
        assert_eq!(keys("BLPOP", "BLPOP a b 0"), known(&["a", "b"]));
        assert_eq!(keys("RPOPLPUSH", "RPOPLPUSH a b"), known(&["a", "b"]));
        assert_eq!(keys("OBJECT ENCODING", "OBJECT ENCODING k"), known(&["k"]));
        assert_eq!(keys("PING", "PING"), known(&[]));
        // Too few arguments: no key there (the server rejects the arity).
        assert_eq!(keys("GET", "GET"), known(&[]));
        assert_eq!(keys("BLPOP", "BLPOP"), known(&[]));
        assert_eq!(row("GET").keys(&[]), known(&[]));
    }

    #[test]
    fn counted_keys() {
        assert_eq!(keys("EVAL", "EVAL s 2 a b x"), known(&["a", "b"]));
        assert_eq!(keys("EVAL", "EVAL s 0 x"), known(&[]));
        assert_eq!(keys("ZUNION", "ZUNION 2 a b WITHSCORES"), known(&["a", "b"]));
        assert_eq!(keys("BLMPOP", "BLMPOP 0 2 a b LEFT"), known(&["a", "b"]));
        assert_eq!(keys("ZUNIONSTORE", "ZUNIONSTORE d 2 a b"), known(&["d", "a", "b"]));
        assert_eq!(keys("MSETEX", "MSETEX 2 a 1 b 2 EX 5"), known(&["a", "b"]));
    }

    #[test]
    fn malformed_counts_never_panic() {
        for line in [
            "EVAL s x a",
            "EVAL s -1 a",
            "EVAL s +1 a",
            "EVAL s 3 a b",
            "EVAL s 99999999999999999999 a",
            "EVAL s 18446744073709551615 a",
            "EVAL s",
            "EVAL s  a",
        ] {
            assert_eq!(keys("EVAL", line), CommandKeys::BadCount, "{line}");
        }
        // Every key needs its value with step 2.
        assert_eq!(keys("MSETEX", "MSETEX 2 a 1 b"), CommandKeys::BadCount);
        assert_eq!(keys("MSETEX", "MSETEX 9223372036854775807 a 1"), CommandKeys::BadCount);
        assert_eq!(keys("ZUNIONSTORE", "ZUNIONSTORE d"), CommandKeys::BadCount);
    }

    #[test]
    fn channel_and_ask_server() {
        assert_eq!(keys("PUBLISH", "PUBLISH ch msg"), known(&["ch"]));
        assert_eq!(keys("PUBLISH", "PUBLISH"), known(&[]));
        assert_eq!(keys("SORT", "SORT k STORE d"), CommandKeys::AskServer);
        assert_eq!(keys("XREAD", "XREAD STREAMS s 0"), CommandKeys::AskServer);
    }

    fn block(name: &str, line: &str) -> Option<Duration> {
        row(name).block_time(&args(line))
    }

    #[test]
    fn block_times() {
        assert_eq!(block("GET", "GET k"), None);
        assert_eq!(block("BLPOP", "BLPOP a b 0"), Some(Duration::ZERO));
        assert_eq!(block("BLPOP", "BLPOP a 1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(block("BLMOVE", "BLMOVE a b LEFT RIGHT 2"), Some(Duration::from_secs(2)));
        assert_eq!(block("BLMPOP", "BLMPOP 3 1 a LEFT"), Some(Duration::from_secs(3)));
        assert_eq!(block("BZMPOP", "BZMPOP 0.25 1 a MIN"), Some(Duration::from_millis(250)));
        assert_eq!(block("WAIT", "WAIT 1 100"), Some(Duration::from_millis(100)));
        assert_eq!(block("WAITAOF", "WAITAOF 1 0 0"), Some(Duration::ZERO));
        assert_eq!(block("XREAD", "XREAD COUNT 1 STREAMS s 0"), None);
        assert_eq!(
            block("XREAD", "XREAD COUNT 1 block 250 STREAMS s 0"),
            Some(Duration::from_millis(250))
        );
        // A stream named BLOCK is not the option.
        assert_eq!(block("XREAD", "XREAD STREAMS BLOCK 5 0 0"), None);
        assert_eq!(
            block("XREADGROUP", "XREADGROUP GROUP g c BLOCK 0 STREAMS s >"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn malformed_block_times_never_panic() {
        for line in [
            "BLPOP a -1",
            "BLPOP a x",
            "BLPOP a inf",
            "BLPOP a NaN",
            "BLPOP a 1e300",
            "BLPOP",
        ] {
            assert_eq!(block("BLPOP", line), None, "{line}");
        }
        assert_eq!(row("BLPOP").block_time(&[]), None);
        for line in [
            "XREAD BLOCK",
            "XREAD BLOCK -1 STREAMS s 0",
            "XREAD BLOCK 1.5 STREAMS s 0",
            "XREAD BLOCK +1",
        ] {
            assert_eq!(block("XREAD", line), None, "{line}");
        }
        assert_eq!(block("BLMPOP", "BLMPOP"), None);
        assert_eq!(block("WAIT", "WAIT"), None);
    }

    #[test]
    fn the_table_carries_access_and_blocking() {
        assert_eq!(row("GET").access, Access::Read);
        assert_eq!(row("SET").access, Access::Write);
        assert_eq!(row("PING").access, Access::Neither);
        assert_eq!(
            row("OBJECT ENCODING").key_spec,
            KeySpec::Range {
                first: 2,
                last: 2,
                step: 1
            }
        );
        assert_eq!(
            row("ZUNIONSTORE").key_spec,
            KeySpec::NumKeys {
                count_at: 2,
                step: 1,
                dest: Some(1)
            }
        );
        assert!(row("BLPOP").block.is_some() && row("LPOP").block.is_none());
    }
}
