//! The servers' own `COMMAND` metadata, for commands the table does not
//! know (modules): parsed once per client configuration, which caches it
//! for its routed handles.

use std::collections::HashMap;

use redis::Value;

use crate::merge::Response;

/// What the server says about one command.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) step: i64,
    pub(crate) movable: bool,
    pub(crate) all_servers: bool,
    pub(crate) response: Response,
    pub(crate) has_subcommands: bool,
}

/// The servers' `COMMAND` output, by lower-case name (`config|get`).
#[derive(Debug, Default)]
pub(crate) struct CommandBook {
    pub(crate) infos: HashMap<String, Info>,
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

pub(crate) fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        _ => 0,
    }
}

impl CommandBook {
    pub(crate) fn parse(reply: &Value) -> CommandBook {
        let mut book = CommandBook::default();
        if let Value::Array(entries) = reply {
            for e in entries {
                book.add(e);
            }
        }
        book
    }

    fn add(&mut self, entry: &Value) {
        let Value::Array(f) = entry else { return };
        if f.len() < 6 {
            return;
        }
        let Some(name) = text(&f[0]) else { return };
        let flags: Vec<String> = match &f[2] {
            Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let tips: Vec<String> = match f.get(7) {
            Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let subcommands = match f.get(9) {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let response = tips
            .iter()
            .find_map(|t| t.strip_prefix("response_policy:"))
            .map(response_of)
            .unwrap_or(Response::None);
        let all_servers = tips
            .iter()
            .any(|t| t == "request_policy:all_shards" || t == "request_policy:all_nodes");
        self.infos.insert(
            name.to_ascii_lowercase(),
            Info {
                first: int(&f[3]),
                last: int(&f[4]),
                step: int(&f[5]),
                movable: flags.iter().any(|x| x == "movablekeys"),
                all_servers,
                response,
                has_subcommands: !subcommands.is_empty(),
            },
        );
        for sub in &subcommands {
            self.add(sub);
        }
    }
}

pub(crate) fn response_of(policy: &str) -> Response {
    match policy {
        "none" => Response::None,
        "agg_sum" => Response::AggSum,
        "all_succeeded" => Response::AllSucceeded,
        "one_succeeded" => Response::OneSucceeded,
        "agg_logical_and" => Response::AggAnd,
        "agg_logical_or" => Response::AggOr,
        "agg_min" => Response::AggMin,
        "agg_max" => Response::AggMax,
        _ => Response::Special,
    }
}
