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
    /// The generated methods.
    pub methods: &'static [MethodSpec],
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
