//! The command table as data, generated from `commands.toml`: what each
//! Redis command is and how mredis routes it.

/// How a command is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The generated methods.
    pub methods: &'static [MethodSpec],
}

/// How the replies of a command sent to every server combine into one reply
/// on a routed handle (the `reply` field of `commands.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Example invocations of routed methods, for the routing test (feature
/// `table-examples`; not part of the API).
#[cfg(feature = "table-examples")]
#[doc(hidden)]
pub mod examples {
    mredis_macros::command_examples!();
}
