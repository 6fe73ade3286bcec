//! The command table's data model and its parser. Parsing keeps the line of
//! every row and method so that each problem found here or in `validate` is
//! reported as `commands.toml:LINE: COMMAND: message`, all problems at once.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// How a command is sent to the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Routed to the server that owns one key.
    Key,
    /// Sent to every server; one result per server.
    All,
    /// Independent keys split by server, replies merged (scatter-gather).
    Multi,
    /// Several keys that must live on one server.
    Colocated,
    /// No method exists.
    Omitted,
}

impl Class {
    pub const NAMES: &'static str = "key, all, multi, colocated, omitted";

    fn parse(s: &str) -> Option<Class> {
        Some(match s {
            "key" => Class::Key,
            "all" => Class::All,
            "multi" => Class::Multi,
            "colocated" => Class::Colocated,
            "omitted" => Class::Omitted,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Key => "key",
            Class::All => "all",
            Class::Multi => "multi",
            Class::Colocated => "colocated",
            Class::Omitted => "omitted",
        }
    }
}

/// The `reply` field of an `all` row: how the replies combine on a routed
/// handle (each variant is documented on `mredis::Reply`, its twin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Sum,
    Concat,
    AllOk,
    OneOk,
    First,
    And,
    SumPairs,
    Same,
    PerServer,
}

impl Reply {
    pub const NAMES: &'static str = "sum, concat, all-ok, one-ok, first, and, sum-pairs, same, per-server";

    fn parse(s: &str) -> Option<Reply> {
        Some(match s {
            "sum" => Reply::Sum,
            "concat" => Reply::Concat,
            "all-ok" => Reply::AllOk,
            "one-ok" => Reply::OneOk,
            "first" => Reply::First,
            "and" => Reply::And,
            "sum-pairs" => Reply::SumPairs,
            "same" => Reply::Same,
            "per-server" => Reply::PerServer,
            _ => return None,
        })
    }

    /// The variant of `mredis::Reply` it becomes.
    pub fn variant(self) -> &'static str {
        match self {
            Reply::Sum => "Sum",
            Reply::Concat => "Concat",
            Reply::AllOk => "AllOk",
            Reply::OneOk => "OneOk",
            Reply::First => "First",
            Reply::And => "And",
            Reply::SumPairs => "SumPairs",
            Reply::Same => "Same",
            Reply::PerServer => "PerServer",
        }
    }
}

/// The `key_spec` field: where the server finds the command's keys
/// (each form is documented on `mredis::KeySpec`, its twin). Positions
/// count the command name as argument 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// No `key_spec`: the command has no keys.
    Keyless,
    /// `{ first, last, step }`: fixed positions (negative `last` counts
    /// from the end).
    Range { first: i64, last: i64, step: i64 },
    /// `{ numkeys, step, dest }`: the count at `count_at`, its keys after it
    /// every `step` arguments, and maybe one key before the count.
    NumKeys {
        dest: Option<i64>,
        count_at: i64,
        step: i64,
    },
    /// `{ channel }`: routed by the channel at that position.
    Channel(i64),
    /// `"ask-server"`: only the server can tell (COMMAND GETKEYS).
    AskServer,
}

/// The `access` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Neither,
    Read,
    Write,
}

impl Access {
    /// The variant of `mredis::Access` it becomes.
    pub fn variant(self) -> &'static str {
        match self {
            Access::Neither => "Neither",
            Access::Read => "Read",
            Access::Write => "Write",
        }
    }
}

/// Where a blocking command's block time is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockAt {
    /// `at = N`: the argument at that position (negative: from the end).
    Index(i64),
    /// `after = "WORD"`: the argument after that word, looked for only
    /// before the word `until` (if given).
    After { word: String, until: Option<String> },
}

/// The unit of a block time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Milliseconds,
}

/// The `block` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub at: BlockAt,
    pub unit: Unit,
}

/// How the per-server replies of a `multi` command are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// One array, in the caller's key order (MGET).
    Ordered,
    /// Integers added up (DEL, EXISTS, UNLINK, TOUCH).
    Sum,
    /// Every server answered OK (MSET).
    Ok,
}

impl Merge {
    fn parse(s: &str) -> Option<Merge> {
        Some(match s {
            "ordered" => Merge::Ordered,
            "sum" => Merge::Sum,
            "ok" => Merge::Ok,
            _ => return None,
        })
    }
}

/// One piece of a `cmd` wire template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A literal word sent as is.
    Word(String),
    /// `{name}`: the argument `name`.
    Arg(String),
    /// `{#name}`: how many arguments `name` writes (for `numkeys`).
    Count(String),
}

/// One generated method of a command row.
#[derive(Debug, Clone)]
pub struct Method {
    pub line: usize,
    pub sig_text: String,
    pub sig: Option<syn::Signature>,
    pub cmd: Option<Vec<Piece>>,
    pub key: Option<String>,
    pub keys: Vec<String>,
    pub pairs: Option<String>,
    pub stride: Option<usize>,
    pub merge: Option<Merge>,
    pub example: Option<String>,
    /// A fixed return type (`Option<isize>`) instead of the `RV` generic.
    pub returns: Option<String>,
}

impl Method {
    /// The fixed return type, when `returns` is given and parses.
    pub fn returns_type(&self) -> Option<syn::Type> {
        self.returns.as_deref().and_then(|r| syn::parse_str(r).ok())
    }

    pub fn name(&self) -> String {
        match &self.sig {
            Some(sig) => sig.ident.to_string(),
            None => self.sig_text.split(['<', '(']).next().unwrap_or("").trim().to_string(),
        }
    }

    /// The argument names of the signature, in order.
    pub fn arg_names(&self) -> Vec<String> {
        let Some(sig) = &self.sig else { return Vec::new() };
        sig.inputs
            .iter()
            .filter_map(|input| match input {
                syn::FnArg::Typed(pat) => match &*pat.pat {
                    syn::Pat::Ident(id) => Some(id.ident.to_string()),
                    _ => None,
                },
                syn::FnArg::Receiver(_) => None,
            })
            .collect()
    }

    /// Every argument that holds keys, in the order the row names them.
    pub fn key_args(&self) -> Vec<String> {
        let mut out: Vec<String> = self.key.iter().cloned().collect();
        out.extend(self.keys.iter().cloned());
        out.extend(self.pairs.iter().cloned());
        out
    }
}

/// One row of the table: a Redis command or container subcommand.
#[derive(Debug, Clone)]
pub struct Command {
    pub line: usize,
    pub name: String,
    pub group: String,
    pub class: Option<Class>,
    pub summary: String,
    pub since: Option<String>,
    pub reason: Option<String>,
    /// The cargo feature of mredis the row's methods need (`bloom`), and
    /// the line of that field.
    pub feature: Option<String>,
    pub feature_line: usize,
    /// `all` rows: how the replies combine on a routed handle, and the
    /// line of that field when it is given (valid or not).
    pub reply: Option<Reply>,
    pub reply_line: Option<usize>,
    /// Where the keys are (`key_spec`), and the line of that field (the
    /// row's line when it is not given).
    pub key_spec: KeySpec,
    pub key_spec_line: usize,
    /// `read`, `write` or neither (`access`).
    pub access: Access,
    /// Whether it blocks and where its block time is (`block`).
    pub block: Option<Block>,
    /// Whether a client-side cache may keep its replies (`cacheable`),
    /// and the line of that field.
    pub cacheable: bool,
    pub cacheable_line: usize,
    pub methods: Vec<Method>,
}

/// The whole table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub commands: Vec<Command>,
}

/// Problems found in the table; all are reported together.
#[derive(Debug, Default)]
pub struct Problems {
    pub messages: Vec<String>,
}

impl Problems {
    pub fn push(&mut self, line: usize, command: &str, message: impl std::fmt::Display) {
        let who = if command.is_empty() {
            String::new()
        } else {
            format!("{command}: ")
        };
        self.messages.push(format!("commands.toml:{line}: {who}{message}"));
    }

    /// One compile error per problem, combined.
    pub fn into_syn_error(self) -> Option<syn::Error> {
        let mut iter = self.messages.into_iter();
        let first = iter.next()?;
        let mut err = syn::Error::new(proc_macro2::Span::call_site(), first);
        for message in iter {
            err.combine(syn::Error::new(proc_macro2::Span::call_site(), message));
        }
        Some(err)
    }
}

/// Line number (1-based) of a byte offset.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

const COMMAND_FIELDS: &[&str] = &[
    "name",
    "group",
    "class",
    "summary",
    "since",
    "reason",
    "feature",
    "reply",
    "key_spec",
    "access",
    "block",
    "cacheable",
    "methods",
];
const METHOD_FIELDS: &[&str] = &[
    "sig", "cmd", "key", "keys", "pairs", "stride", "merge", "example", "returns",
];

/// The cargo features of mredis a row's `feature` may name; each must exist
/// in `mredis/Cargo.toml` (it forwards to redis-rs's feature of that name).
pub const FEATURES: &[&str] = &["bloom", "vector-sets"];

/// Parses the table text. Returns what could be read plus every problem.
pub fn parse(src: &str) -> (Table, Problems) {
    let mut problems = Problems::default();
    let mut table = Table::default();
    let root = match DeTable::parse(src) {
        Ok(root) => root,
        Err(err) => {
            let line = err.span().map(|s| line_of(src, s.start)).unwrap_or(1);
            problems.push(line, "", format!("not valid TOML: {}", err.message()));
            return (table, problems);
        }
    };
    for (key, value) in root.get_ref().iter() {
        let line = line_of(src, key.span().start);
        if key.get_ref().as_ref() != "command" {
            problems.push(
                line,
                "",
                format!(
                    "unknown top-level field `{}` (expected `[[command]]` rows)",
                    key.get_ref()
                ),
            );
            continue;
        }
        let DeValue::Array(rows) = value.get_ref() else {
            problems.push(line, "", "`command` must be an array of tables: write `[[command]]`");
            continue;
        };
        for row in rows.iter() {
            if let Some(cmd) = parse_command(src, row, &mut problems) {
                table.commands.push(cmd);
            }
        }
    }
    (table, problems)
}

fn parse_command(src: &str, row: &Spanned<DeValue<'_>>, problems: &mut Problems) -> Option<Command> {
    let line = line_of(src, row.span().start);
    let DeValue::Table(fields) = row.get_ref() else {
        problems.push(line, "", "a `command` row must be a table");
        return None;
    };
    let name = match string_field(src, fields, "name", problems, "") {
        Some(name) => name,
        None => {
            problems.push(line, "", "row without `name`");
            String::new()
        }
    };
    let who = if name.is_empty() { "<unnamed>" } else { name.as_str() };
    for (key, _) in fields.iter() {
        let k = key.get_ref().as_ref();
        if !COMMAND_FIELDS.contains(&k) {
            problems.push(
                line_of(src, key.span().start),
                who,
                format!("unknown field `{k}` (expected one of: {})", COMMAND_FIELDS.join(", ")),
            );
        }
    }
    let group = string_field(src, fields, "group", problems, who).unwrap_or_default();
    let summary = string_field(src, fields, "summary", problems, who).unwrap_or_default();
    let since = string_field(src, fields, "since", problems, who);
    let reason = string_field(src, fields, "reason", problems, who);
    let feature = string_field(src, fields, "feature", problems, who);
    let feature_line = fields
        .get("feature")
        .map(|v| line_of(src, v.span().start))
        .unwrap_or(line);
    let reply_line = fields.get("reply").map(|v| line_of(src, v.span().start));
    let reply = match string_field(src, fields, "reply", problems, who) {
        None => None,
        Some(r) => match Reply::parse(&r) {
            Some(r) => Some(r),
            None => {
                problems.push(
                    reply_line.unwrap_or(line),
                    who,
                    format!("unknown reply `{r}` (expected one of: {})", Reply::NAMES),
                );
                None
            }
        },
    };
    // On a subcommand row argument 1 is the subcommand: keys start at 2.
    let lowest = if name.contains(' ') { 2 } else { 1 };
    let key_spec_line = fields
        .get("key_spec")
        .map(|v| line_of(src, v.span().start))
        .unwrap_or(line);
    let key_spec = match fields.get("key_spec") {
        None => KeySpec::Keyless,
        Some(v) => parse_key_spec(v.get_ref(), lowest).unwrap_or_else(|message| {
            problems.push(key_spec_line, who, message);
            KeySpec::Keyless
        }),
    };
    let access = match fields.get("access") {
        None => Access::Neither,
        Some(v) => match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "read" => Access::Read,
            DeValue::String(s) if s.as_ref() == "write" => Access::Write,
            _ => {
                problems.push(
                    line_of(src, v.span().start),
                    who,
                    "`access` must be \"read\" or \"write\" (leave it out for neither)",
                );
                Access::Neither
            }
        },
    };
    let mut cacheable_line = line;
    let cacheable = match fields.get("cacheable") {
        None => false,
        Some(v) => {
            cacheable_line = line_of(src, v.span().start);
            match v.get_ref() {
                DeValue::Boolean(b) => *b,
                _ => {
                    problems.push(cacheable_line, who, "`cacheable` must be true or false");
                    false
                }
            }
        }
    };
    let block = fields.get("block").and_then(|v| {
        parse_block(v.get_ref(), lowest)
            .map_err(|message| problems.push(line_of(src, v.span().start), who, message))
            .ok()
    });
    let class = match string_field(src, fields, "class", problems, who) {
        None => {
            problems.push(line, who, format!("missing `class` (one of: {})", Class::NAMES));
            None
        }
        Some(c) => match Class::parse(&c) {
            Some(c) => Some(c),
            None => {
                let at = fields
                    .get("class")
                    .map(|v| line_of(src, v.span().start))
                    .unwrap_or(line);
                problems.push(
                    at,
                    who,
                    format!("unknown class `{c}` (expected one of: {})", Class::NAMES),
                );
                None
            }
        },
    };
    let mut methods = Vec::new();
    if let Some(value) = fields.get("methods") {
        match value.get_ref() {
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let Some(m) = parse_method(src, item, who, problems) {
                        methods.push(m);
                    }
                }
            }
            _ => problems.push(
                line_of(src, value.span().start),
                who,
                "`methods` must be an array of inline tables",
            ),
        }
    }
    Some(Command {
        line,
        name,
        group,
        class,
        summary,
        since,
        reason,
        feature,
        feature_line,
        reply,
        reply_line,
        key_spec,
        key_spec_line,
        access,
        block,
        cacheable,
        cacheable_line,
        methods,
    })
}

const KEY_SPEC_FORMS: &str = "`{ first = 1, last = -1, step = 1 }`, `{ numkeys = 2 }`, `{ dest = 1, numkeys = 2 }`, \
                              `{ channel = 1 }` or \"ask-server\"";

/// An integer field of an inline table: `None` if absent, an error if it is
/// not an integer.
fn int_field(table: &DeTable<'_>, field: &str, what: &str) -> Result<Option<i64>, String> {
    match table.get(field).map(|v| v.get_ref()) {
        None => Ok(None),
        Some(DeValue::Integer(i)) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Some)
            .map_err(|_| format!("`{what}`: `{field}` is out of range")),
        Some(_) => Err(format!("`{what}`: `{field}` must be an integer")),
    }
}

/// Checks that an inline table has only the given fields.
fn only_fields(table: &DeTable<'_>, allowed: &[&str], what: &str, form: &str) -> Result<(), String> {
    for (key, _) in table.iter() {
        let k = key.get_ref().as_ref();
        if !allowed.contains(&k) {
            return Err(format!(
                "`{what}`: unknown field `{k}` in {form} (expected: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// A position of an argument, at least `lowest` (2 on subcommand rows).
fn position(value: Option<i64>, field: &str, lowest: i64, what: &str) -> Result<Option<i64>, String> {
    match value {
        Some(n) if n < lowest => Err(format!(
            "`{what}`: `{field} = {n}` is not an argument position (argument 0 is the command name{}; the first \
             possible is {lowest})",
            if lowest > 1 { ", 1 the subcommand" } else { "" }
        )),
        other => Ok(other),
    }
}

/// Parses a `key_spec` value (`lowest` = the first argument that can be a key).
fn parse_key_spec(value: &DeValue<'_>, lowest: i64) -> Result<KeySpec, String> {
    let what = "key_spec";
    let table = match value {
        DeValue::String(s) if s.as_ref() == "ask-server" => return Ok(KeySpec::AskServer),
        DeValue::Table(t) => t,
        _ => return Err(format!("`key_spec` must be one of {KEY_SPEC_FORMS}")),
    };
    let step = match int_field(table, "step", what)? {
        None => 1,
        Some(s) if s >= 1 => s,
        Some(s) => return Err(format!("`key_spec`: `step = {s}` must be 1 or more")),
    };
    if table.get("channel").is_some() {
        only_fields(table, &["channel"], what, "the channel form")?;
        let at = position(int_field(table, "channel", what)?, "channel", lowest, what)?;
        return Ok(KeySpec::Channel(at.unwrap_or(lowest)));
    }
    if table.get("numkeys").is_some() {
        only_fields(table, &["numkeys", "dest", "step"], what, "the numkeys form")?;
        let count_at = position(int_field(table, "numkeys", what)?, "numkeys", lowest, what)?.unwrap_or(lowest);
        let dest = position(int_field(table, "dest", what)?, "dest", lowest, what)?;
        if let Some(d) = dest
            && d >= count_at
        {
            return Err(format!(
                "`key_spec`: `dest = {d}` must come before the count (`numkeys = {count_at}`)"
            ));
        }
        return Ok(KeySpec::NumKeys { dest, count_at, step });
    }
    if table.get("first").is_none() {
        return Err(format!("`key_spec` must be one of {KEY_SPEC_FORMS}"));
    }
    only_fields(table, &["first", "last", "step"], what, "the fixed-position form")?;
    let first = position(int_field(table, "first", what)?, "first", lowest, what)?.unwrap_or(lowest);
    let last = int_field(table, "last", what)?.unwrap_or(first);
    if last == 0 || (last > 0 && last < first) {
        return Err(format!(
            "`key_spec`: `last = {last}` must be at least `first` ({first}), or negative to count from the end \
             (-1 = the last argument)"
        ));
    }
    Ok(KeySpec::Range { first, last, step })
}

/// Parses a `block` value.
fn parse_block(value: &DeValue<'_>, lowest: i64) -> Result<Block, String> {
    let what = "block";
    let forms = "`{ at = -1, unit = \"s\" }` or `{ after = \"BLOCK\", until = \"STREAMS\", unit = \"ms\" }`";
    let DeValue::Table(table) = value else {
        return Err(format!("`block` must be an inline table: {forms}"));
    };
    only_fields(table, &["at", "after", "until", "unit"], what, "`block`")?;
    let unit = match table.get("unit").map(|v| v.get_ref()) {
        Some(DeValue::String(s)) if s.as_ref() == "s" => Unit::Seconds,
        Some(DeValue::String(s)) if s.as_ref() == "ms" => Unit::Milliseconds,
        Some(_) => return Err("`block`: `unit` must be \"s\" (seconds) or \"ms\" (milliseconds)".to_string()),
        None => return Err(format!("`block` without `unit` (\"s\" or \"ms\"): {forms}")),
    };
    let word = |field: &str| -> Result<Option<String>, String> {
        match table.get(field).map(|v| v.get_ref()) {
            None => Ok(None),
            Some(DeValue::String(s)) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => {
                Ok(Some(s.to_string()))
            }
            Some(_) => Err(format!("`block`: `{field}` must be one word (\"BLOCK\")")),
        }
    };
    let at = match (int_field(table, "at", what)?, word("after")?, word("until")?) {
        (Some(_), Some(_), _) => return Err(format!("`block` has both `at` and `after`; give one: {forms}")),
        (Some(_), None, Some(_)) => return Err("`block`: `until` goes with `after`, not `at`".to_string()),
        (Some(n), None, None) if n < 0 => BlockAt::Index(n),
        (Some(n), None, None) => BlockAt::Index(position(Some(n), "at", lowest, what)?.unwrap_or(lowest)),
        (None, Some(word), until) => BlockAt::After { word, until },
        (None, None, _) => return Err(format!("`block` needs `at` or `after`: {forms}")),
    };
    Ok(Block { at, unit })
}

fn parse_method(src: &str, item: &Spanned<DeValue<'_>>, who: &str, problems: &mut Problems) -> Option<Method> {
    let line = line_of(src, item.span().start);
    let DeValue::Table(fields) = item.get_ref() else {
        problems.push(
            line,
            who,
            "each method must be an inline table like `{ sig = \"...\", key = \"key\" }`",
        );
        return None;
    };
    for (key, _) in fields.iter() {
        let k = key.get_ref().as_ref();
        if !METHOD_FIELDS.contains(&k) {
            problems.push(
                line_of(src, key.span().start),
                who,
                format!(
                    "unknown method field `{k}` (expected one of: {})",
                    METHOD_FIELDS.join(", ")
                ),
            );
        }
    }
    let Some(sig_text) = string_field(src, fields, "sig", problems, who) else {
        problems.push(line, who, "method without `sig`");
        return None;
    };
    let sig = match syn::parse_str::<syn::Signature>(&format!("fn {sig_text}")) {
        Ok(sig) => Some(sig),
        Err(err) => {
            problems.push(
                line,
                who,
                format!("`sig = \"{sig_text}\"` is not a Rust signature: {err}"),
            );
            None
        }
    };
    let cmd = string_field(src, fields, "cmd", problems, who).map(|t| parse_template(&t));
    let key = string_field(src, fields, "key", problems, who);
    let pairs = string_field(src, fields, "pairs", problems, who);
    let example = string_field(src, fields, "example", problems, who);
    let returns = string_field(src, fields, "returns", problems, who);
    let keys = match fields.get("keys") {
        None => Vec::new(),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|i| match i.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => {
                        problems.push(line, who, "`keys` must be a list of argument names");
                        None
                    }
                })
                .collect(),
            _ => {
                problems.push(line, who, "`keys` must be a list of argument names");
                Vec::new()
            }
        },
    };
    let stride = match fields.get("stride") {
        None => None,
        Some(v) => match v.get_ref() {
            DeValue::Integer(i) if i.as_str() == "1" => Some(1),
            DeValue::Integer(i) if i.as_str() == "2" => Some(2),
            _ => {
                problems.push(line, who, "`stride` must be 1 (keys) or 2 (key/value pairs)");
                None
            }
        },
    };
    let merge = match string_field(src, fields, "merge", problems, who) {
        None => None,
        Some(m) => match Merge::parse(&m) {
            Some(m) => Some(m),
            None => {
                problems.push(line, who, format!("unknown merge `{m}` (expected ordered, sum or ok)"));
                None
            }
        },
    };
    Some(Method {
        line,
        sig_text,
        sig,
        cmd,
        key,
        keys,
        pairs,
        stride,
        merge,
        example,
        returns,
    })
}

fn string_field(src: &str, fields: &DeTable<'_>, name: &str, problems: &mut Problems, who: &str) -> Option<String> {
    let value = fields.get(name)?;
    match value.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        _ => {
            problems.push(
                line_of(src, value.span().start),
                who,
                format!("`{name}` must be a string"),
            );
            None
        }
    }
}

/// Splits `OBJECT ENCODING {key}` into words and `{arg}` references.
pub fn parse_template(text: &str) -> Vec<Piece> {
    text.split_whitespace()
        .map(|word| match word.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(arg) => match arg.strip_prefix('#') {
                Some(counted) => Piece::Count(counted.to_string()),
                None => Piece::Arg(arg.to_string()),
            },
            None => Piece::Word(word.to_string()),
        })
        .collect()
}
