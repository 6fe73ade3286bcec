//! Documentation text generated from the table: each method's doc comment
//! and the command overview shown on docs.rs.

use crate::table::{Class, Command, Merge, Method, Table};

/// The redis.io page of a command (`OBJECT ENCODING` -> `object-encoding`).
pub fn docs_url(name: &str) -> String {
    let slug = name.to_lowercase().replace([' ', '|'], "-");
    format!("https://redis.io/docs/latest/commands/{slug}/")
}

fn code_list(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// One line on how the method is routed.
pub fn routing_line(cmd: &Command, m: &Method) -> String {
    match cmd.class {
        Some(Class::Key) => format!(
            "Routed to the server that owns `{}`.",
            m.key.as_deref().unwrap_or("key")
        ),
        Some(Class::All) => "Sent to every server; one result per server \
            ([`PerServer`](crate::PerServer), in configuration order). If any server fails, \
            the [`FanOutError`](crate::FanOutError) names it and still holds the other results."
            .to_string(),
        Some(Class::Multi) => {
            let merge = match m.merge {
                Some(Merge::Ordered) => "the replies are put back in the order of the keys given",
                Some(Merge::Sum) => "the counts are added up",
                Some(Merge::Ok) | None => "it succeeds when every server answered OK",
            };
            format!(
                "Scatter-gather: the keys in {} are grouped by server, one `{}` is sent to each \
                 server that owns some of them, and {merge}, as one server would answer. If a \
                 server fails, the error names it and the servers that did succeed.",
                code_list(&m.key_args()),
                cmd.name
            )
        }
        Some(Class::Colocated) => format!(
            "All keys ({}) must live on one server: use hash tags (`{{user:1}}:a`, \
             `{{user:1}}:b`) to put them together. Otherwise it fails before anything is sent, \
             with an error naming the keys and their servers.",
            code_list(&m.key_args())
        ),
        Some(Class::Omitted) | None => String::new(),
    }
}

/// The doc lines of one generated method.
pub fn method_doc(cmd: &Command, m: &Method) -> Vec<String> {
    let mut lines = vec![format!(" {}", cmd.summary), String::new()];
    lines.push(format!(" {}", routing_line(cmd, m)));
    lines.push(String::new());
    if let Some(returns) = &m.returns {
        lines.push(format!(
            " The reply is always converted to `{returns}` (no `RV` to choose)."
        ));
        lines.push(String::new());
    }
    lines.push(format!(" `{}` — [Redis docs]({})", cmd.name, docs_url(&cmd.name)));
    if let Some(since) = &cmd.since {
        lines.push(String::new());
        lines.push(format!(" {}", needs(since)));
    }
    if let Some(feature) = &cmd.feature {
        lines.push(String::new());
        lines.push(format!(" Needs mredis's cargo feature `{feature}`."));
    }
    lines
}

/// The sentence for a row's `since`: a Redis version (`7.2.0`), another
/// server's (`Valkey 8.1`) or a module (`RedisBloom`).
fn needs(since: &str) -> String {
    if since.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Needs Redis {since} or newer.")
    } else if since.contains(|c: char| c.is_ascii_digit()) {
        format!("Needs {since} or newer.")
    } else {
        format!("Needs the {since} module on the servers.")
    }
}

fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The overview of every command by class, as Markdown.
pub fn overview(table: &Table) -> String {
    let mut out = String::new();
    let sections = [
        (
            Class::Key,
            "Routed to the key's server",
            "Each runs on the server that owns its key.",
        ),
        (
            Class::All,
            "Fan-out",
            "Sent to every server; one result per server (`PerServer`).",
        ),
        (
            Class::Multi,
            "Scatter-gather",
            "Keys grouped by server, one command per server, replies merged as one server would answer.",
        ),
        (
            Class::Colocated,
            "Co-located keys",
            "All keys must live on one server (use hash tags); otherwise an error before anything is sent.",
        ),
        (
            Class::Omitted,
            "Omitted",
            "No method exists, so misuse does not compile. The reason is given for each.",
        ),
    ];
    let total = table.commands.len();
    out.push_str(&format!(
        "Every command of the table (`commands.toml`, {total} rows) and what mredis does with it.\n\n"
    ));
    for (class, title, blurb) in sections {
        let rows: Vec<&Command> = table.commands.iter().filter(|c| c.class == Some(class)).collect();
        out.push_str(&format!("## {title} ({})\n\n{blurb}\n\n", rows.len()));
        if class == Class::Omitted {
            out.push_str("| command | why it is omitted |\n|---|---|\n");
            for c in rows {
                out.push_str(&format!(
                    "| [`{}`]({}) | {} |\n",
                    c.name,
                    docs_url(&c.name),
                    escape_cell(c.reason.as_deref().unwrap_or(""))
                ));
            }
        } else {
            out.push_str("| command | methods | summary |\n|---|---|---|\n");
            for c in rows {
                let methods: Vec<String> = c.methods.iter().map(|m| format!("`{}`", m.name())).collect();
                let feature = c
                    .feature
                    .as_deref()
                    .map(|f| format!(" (feature `{f}`)"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| [`{}`]({}) | {}{feature} | {} |\n",
                    c.name,
                    docs_url(&c.name),
                    methods.join(", "),
                    escape_cell(&c.summary)
                ));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_url_of_subcommands() {
        assert_eq!(
            docs_url("OBJECT ENCODING"),
            "https://redis.io/docs/latest/commands/object-encoding/"
        );
        assert_eq!(docs_url("GET"), "https://redis.io/docs/latest/commands/get/");
        assert_eq!(docs_url("BF.ADD"), "https://redis.io/docs/latest/commands/bf.add/");
    }

    #[test]
    fn since_of_versions_servers_and_modules() {
        assert_eq!(needs("7.2.0"), "Needs Redis 7.2.0 or newer.");
        assert_eq!(needs("Valkey 8.1"), "Needs Valkey 8.1 or newer.");
        assert_eq!(needs("RedisBloom"), "Needs the RedisBloom module on the servers.");
    }
}
