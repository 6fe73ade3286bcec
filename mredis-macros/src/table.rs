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
    "name", "group", "class", "summary", "since", "reason", "feature", "reply", "methods",
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
        methods,
    })
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
