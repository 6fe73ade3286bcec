//! Checks that the parsed table makes sense before anything is generated:
//! every class gets the fields it needs, names are unique, argument names
//! refer to real arguments. Problems are collected, never thrown one by one.

use std::collections::BTreeMap;

use crate::table::{Class, FEATURES, KeySpec, Method, Piece, Problems, Table};

/// Validates the whole table, appending every problem found.
pub fn validate(table: &Table, problems: &mut Problems) {
    let mut seen_commands: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen_methods: BTreeMap<String, (usize, &str)> = BTreeMap::new();

    for cmd in &table.commands {
        let who = cmd.name.as_str();
        if cmd.name.is_empty() {
            continue;
        }
        if cmd.name != cmd.name.to_uppercase() {
            problems.push(cmd.line, who, "command names are upper case (`CLIENT LIST`, `GET`)");
        }
        if let Some(first) = seen_commands.insert(who, cmd.line) {
            problems.push(
                cmd.line,
                who,
                format!("duplicate command row (first at commands.toml:{first})"),
            );
        }
        if cmd.summary.is_empty() {
            problems.push(cmd.line, who, "missing `summary`");
        }
        if cmd.group.is_empty() {
            problems.push(cmd.line, who, "missing `group`");
        }
        if let Some(feature) = &cmd.feature
            && !FEATURES.contains(&feature.as_str())
        {
            problems.push(
                cmd.feature_line,
                who,
                format!(
                    "unknown feature `{feature}` (expected one of: {}; a new one also needs `[features]` in \
                     mredis/Cargo.toml and `FEATURES` in mredis-macros)",
                    FEATURES.join(", ")
                ),
            );
        }
        let Some(class) = cmd.class else { continue };
        // A client-side cache keeps a reply until the server says its key
        // changed: only a read of one key, the first argument, qualifies.
        let one_key = matches!(cmd.key_spec, KeySpec::Range { first: 1, last: 1, .. });
        if cmd.cacheable && (class != Class::Key || cmd.access != crate::table::Access::Read || !one_key) {
            problems.push(
                cmd.cacheable_line,
                who,
                "`cacheable` is only for `key` rows that read one key (`access = \"read\"`, \
                 `key_spec = { first = 1 }`)",
            );
        }
        match (class, cmd.reply_line) {
            (Class::All, None) => problems.push(
                cmd.line,
                who,
                format!(
                    "`all` row without `reply` (how its servers' replies combine on a routed handle; one of: {})",
                    crate::table::Reply::NAMES
                ),
            ),
            (Class::All, _) | (_, None) => {}
            (other, Some(at)) => problems.push(
                at,
                who,
                format!("`reply` is only for `all` rows (this row is `{}`)", other.name()),
            ),
        }
        if class == Class::Multi
            && let KeySpec::Range { step, .. } = cmd.key_spec
        {
            for m in &cmd.methods {
                if let Some(stride) = m.stride
                    && stride as i64 != step
                {
                    problems.push(
                        cmd.key_spec_line,
                        who,
                        format!(
                            "`key_spec` has `step = {step}` but `{}` splits with `stride = {stride}`",
                            m.name()
                        ),
                    );
                }
            }
        }
        match class {
            Class::Omitted => {
                if cmd.feature.is_some() {
                    problems.push(
                        cmd.line,
                        who,
                        "`feature` is not for `omitted` rows: they generate nothing",
                    );
                }
                if cmd.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    problems.push(cmd.line, who, "`omitted` row without a `reason`");
                }
                if !cmd.methods.is_empty() {
                    problems.push(cmd.line, who, "`omitted` rows generate nothing: remove `methods`");
                }
            }
            _ => {
                if cmd.reason.is_some() {
                    problems.push(cmd.line, who, "`reason` is only for `omitted` rows");
                }
                if cmd.methods.is_empty() {
                    problems.push(cmd.line, who, format!("`{}` row without `methods`", class.name()));
                }
            }
        }
        for method in &cmd.methods {
            let name = method.name();
            if let Some((first, first_cmd)) = seen_methods.insert(name.clone(), (method.line, who)) {
                problems.push(
                    method.line,
                    who,
                    format!("duplicate method `{name}` (already generated for {first_cmd} at commands.toml:{first})"),
                );
            }
            validate_method(class, method, who, problems);
        }
    }
}

fn validate_method(class: Class, m: &Method, who: &str, problems: &mut Problems) {
    let line = m.line;
    let Some(sig) = &m.sig else { return };
    let name = sig.ident.to_string();
    if sig.output != syn::ReturnType::Default {
        problems.push(
            line,
            who,
            format!("`{name}`: leave out the return type; methods return `RedisResult<RV>` (or give `returns`)"),
        );
    }
    if sig.inputs.iter().any(|i| matches!(i, syn::FnArg::Receiver(_))) {
        problems.push(line, who, format!("`{name}`: leave out `self`"));
    }
    if sig.asyncness.is_some() || sig.unsafety.is_some() || sig.constness.is_some() {
        problems.push(
            line,
            who,
            format!("`{name}`: plain signatures only (no async/unsafe/const)"),
        );
    }
    for param in &sig.generics.params {
        if let syn::GenericParam::Type(t) = param
            && t.ident == "RV"
        {
            problems.push(
                line,
                who,
                format!("`{name}`: `RV` is added by the generator; do not declare it"),
            );
        }
    }
    if let Some(returns) = &m.returns {
        match syn::parse_str::<syn::Type>(returns) {
            Ok(_) => {}
            Err(err) => problems.push(
                line,
                who,
                format!("`{name}`: `returns = \"{returns}\"` is not a Rust type: {err}"),
            ),
        }
    }
    let args = m.arg_names();
    let has = |a: &str| args.iter().any(|x| x == a);
    for a in m.key_args() {
        if !has(&a) {
            problems.push(
                line,
                who,
                format!("`{name}`: key argument `{a}` is not an argument of `{}`", m.sig_text),
            );
        }
    }
    if let Some(pieces) = &m.cmd {
        match pieces.first() {
            Some(Piece::Word(_)) => {}
            _ => problems.push(line, who, format!("`{name}`: `cmd` must start with the command name")),
        }
        for p in pieces {
            if let Piece::Arg(a) | Piece::Count(a) = p
                && !has(a)
            {
                problems.push(
                    line,
                    who,
                    format!("`{name}`: `cmd` uses `{{{a}}}`, which is not an argument"),
                );
            }
        }
        for a in &args {
            if !pieces.iter().any(|p| matches!(p, Piece::Arg(x) if x == a)) {
                problems.push(line, who, format!("`{name}`: argument `{a}` is not used in `cmd`"));
            }
        }
    }
    let misplaced = |field: &str, problems: &mut Problems| {
        problems.push(
            line,
            who,
            format!("`{name}`: `{field}` does not apply to a `{}` row", class.name()),
        );
    };
    match class {
        Class::Key => {
            if m.key.is_none() {
                problems.push(
                    line,
                    who,
                    format!("`{name}`: `key` row method without `key = \"<argument>\"`"),
                );
            }
            if !m.keys.is_empty() {
                misplaced("keys", problems);
            }
            if m.pairs.is_some() {
                misplaced("pairs", problems);
            }
        }
        Class::All => {
            for (field, set) in [
                ("key", m.key.is_some()),
                ("keys", !m.keys.is_empty()),
                ("pairs", m.pairs.is_some()),
            ] {
                if set {
                    misplaced(field, problems);
                }
            }
        }
        Class::Multi => {
            if m.keys.is_empty() && m.pairs.is_none() {
                problems.push(line, who, format!("`{name}`: `multi` method needs `keys` or `pairs`"));
            }
            match (m.stride, m.pairs.is_some(), m.keys.is_empty()) {
                (None, _, _) => problems.push(line, who, format!("`{name}`: `multi` method needs `stride` (1 or 2)")),
                // The split reads the packed command by `stride`; `keys` and
                // `pairs` must say the same thing.
                (Some(2), true, true) | (Some(1), false, false) => {}
                (Some(stride), _, _) => problems.push(
                    line,
                    who,
                    format!(
                        "`{name}`: `stride = {stride}` does not match its keys: use `stride = 1` with `keys` \
                         (every argument a key) or `stride = 2` with `pairs` (key, value)"
                    ),
                ),
            }
            if m.merge.is_none() {
                problems.push(
                    line,
                    who,
                    format!("`{name}`: `multi` method needs `merge` (ordered, sum or ok)"),
                );
            }
            if m.key.is_some() {
                misplaced("key", problems);
            }
        }
        Class::Colocated => {
            if m.key_args().is_empty() {
                problems.push(
                    line,
                    who,
                    format!("`{name}`: `colocated` method needs `keys` or `pairs`"),
                );
            }
        }
        Class::Omitted => {}
    }
    if class != Class::Multi {
        if m.stride.is_some() {
            misplaced("stride", problems);
        }
        if m.merge.is_some() {
            misplaced("merge", problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::table::parse;

    use super::*;

    fn problems_of(src: &str) -> Vec<String> {
        let (table, mut problems) = parse(src);
        validate(&table, &mut problems);
        problems.messages
    }

    const OK_ROW: &str = r#"
[[command]]
name = "GET"
group = "string"
class = "key"
summary = "Returns the string value of a key."
methods = [{ sig = "get<K: ToSingleRedisArg>(key: K)", key = "key" }]
"#;

    #[test]
    fn a_good_row_has_no_problems() {
        assert_eq!(problems_of(OK_ROW), Vec::<String>::new());
    }

    #[test]
    fn unknown_class_names_the_line_and_command() {
        let src = "[[command]]\nname = \"GET\"\ngroup = \"string\"\nclass = \"sharded\"\nsummary = \"s\"\nmethods = [{ sig = \"get<K: ToSingleRedisArg>(key: K)\", key = \"key\" }]\n";
        assert_eq!(
            problems_of(src),
            vec![
                "commands.toml:4: GET: unknown class `sharded` (expected one of: key, all, multi, colocated, omitted)"
            ]
        );
    }

    #[test]
    fn duplicate_method_is_reported_with_both_places() {
        let src = format!("{OK_ROW}{}", OK_ROW.replace("\"GET\"", "\"GETX\""));
        let p = problems_of(&src);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("commands.toml:14: GETX: duplicate method `get`"),
            "{p:?}"
        );
        assert!(p[0].contains("GET at commands.toml:7"), "{p:?}");
    }

    #[test]
    fn key_row_without_key_argument() {
        let src = OK_ROW.replace(", key = \"key\"", "");
        assert_eq!(
            problems_of(&src),
            vec!["commands.toml:7: GET: `get`: `key` row method without `key = \"<argument>\"`"]
        );
    }

    #[test]
    fn key_naming_a_missing_argument() {
        let src = OK_ROW.replace("key = \"key\"", "key = \"name\"");
        let p = problems_of(&src);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("key argument `name` is not an argument"), "{p:?}");
    }

    #[test]
    fn omitted_row_without_reason() {
        let src = "[[command]]\nname = \"SELECT\"\ngroup = \"connection\"\nclass = \"omitted\"\nsummary = \"s\"\n";
        assert_eq!(
            problems_of(src),
            vec!["commands.toml:1: SELECT: `omitted` row without a `reason`"]
        );
    }

    #[test]
    fn unknown_fields_in_rows_and_methods() {
        let src = OK_ROW
            .replace("summary =", "sumary = \"x\"\nsummary =")
            .replace("key = \"key\" }", "key = \"key\", route = \"x\" }");
        let p = problems_of(&src);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("commands.toml:6: GET: unknown field `sumary`"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("commands.toml:8: GET: unknown method field `route`"),
            "{p:?}"
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let src = format!(
            "{OK_ROW}\n[[command]]\nname = \"PING\"\ngroup = \"connection\"\nclass = \"bogus\"\nsummary = \"s\"\nmethods = [{{ sig = \"ping()\" }}]\n\n[[command]]\nname = \"QUIT\"\ngroup = \"connection\"\nclass = \"omitted\"\nsummary = \"s\"\n"
        );
        let p = problems_of(&src);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("PING: unknown class `bogus`"));
        assert!(p[1].contains("QUIT: `omitted` row without a `reason`"));
    }

    #[test]
    fn bad_signature_and_bad_template() {
        let src = OK_ROW.replace(
            "methods = [{ sig = \"get<K: ToSingleRedisArg>(key: K)\", key = \"key\" }]",
            "methods = [{ sig = \"get<K(key: K)\", key = \"key\" }, { sig = \"getx<K: ToSingleRedisArg>(key: K, n: u8)\", key = \"key\", cmd = \"GET {key} {m}\" }]",
        );
        let p = problems_of(&src);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("is not a Rust signature"), "{p:?}");
        assert!(p[1].contains("uses `{m}`, which is not an argument"), "{p:?}");
        assert!(p[2].contains("argument `n` is not used in `cmd`"), "{p:?}");
    }

    #[test]
    fn multi_needs_stride_and_merge() {
        let src = "[[command]]\nname = \"MGET\"\ngroup = \"string\"\nclass = \"multi\"\nsummary = \"s\"\nmethods = [{ sig = \"mget<K: ToRedisArgs>(key: K)\", keys = [\"key\"] }]\n";
        let p = problems_of(src);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("needs `stride`"));
        assert!(p[1].contains("needs `merge`"));
    }

    #[test]
    fn multi_stride_must_match_keys_or_pairs() {
        let src = "[[command]]\nname = \"MGET\"\ngroup = \"string\"\nclass = \"multi\"\nsummary = \"s\"\nmethods = [{ sig = \"mget<K: ToRedisArgs>(key: K)\", keys = [\"key\"], stride = 2, merge = \"ordered\" }]\n";
        let p = problems_of(src);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("`stride = 2` does not match its keys"), "{p:?}");
    }

    #[test]
    fn returns_must_be_a_rust_type() {
        let good = OK_ROW.replace("key = \"key\" }", "key = \"key\", returns = \"Option<isize>\" }");
        assert_eq!(problems_of(&good), Vec::<String>::new());
        let bad = OK_ROW.replace("key = \"key\" }", "key = \"key\", returns = \"Option<isize\" }");
        let p = problems_of(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("commands.toml:7: GET: `get`: `returns = \"Option<isize\"` is not a Rust type"),
            "{p:?}"
        );
    }

    #[test]
    fn feature_must_be_known() {
        let good = OK_ROW.replace("summary =", "feature = \"bloom\"\nsummary =");
        assert_eq!(problems_of(&good), Vec::<String>::new());
        let bad = OK_ROW.replace("summary =", "feature = \"blom\"\nsummary =");
        let p = problems_of(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("commands.toml:6: GET: unknown feature `blom` (expected one of: bloom, vector-sets"),
            "{p:?}"
        );
    }

    #[test]
    fn invalid_toml_is_reported_with_its_line() {
        let p = problems_of("[[command]]\nname = \"GET\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("commands.toml:2: not valid TOML"), "{p:?}");
    }

    #[test]
    fn key_spec_access_and_block_forms() {
        let with = |fields: &str| OK_ROW.replace("summary =", &format!("{fields}\nsummary ="));
        for good in [
            "key_spec = { first = 1 }",
            "key_spec = { first = 1, last = -2, step = 2 }",
            "key_spec = { numkeys = 2 }",
            "key_spec = { dest = 1, numkeys = 2, step = 2 }",
            "key_spec = { channel = 1 }",
            "key_spec = \"ask-server\"",
            "access = \"read\"",
            "access = \"write\"",
            "block = { at = -1, unit = \"s\" }",
            "block = { after = \"BLOCK\", until = \"STREAMS\", unit = \"ms\" }",
        ] {
            assert_eq!(problems_of(&with(good)), Vec::<String>::new(), "{good}");
        }
        for (bad, says) in [
            ("key_spec = { first = 0 }", "`first = 0` is not an argument position"),
            (
                "key_spec = { first = 2, last = 1 }",
                "`last = 1` must be at least `first` (2)",
            ),
            ("key_spec = { first = 1, step = 0 }", "`step = 0` must be 1 or more"),
            ("key_spec = { first = \"1\" }", "`first` must be an integer"),
            (
                "key_spec = { numkeys = 2, dest = 3 }",
                "`dest = 3` must come before the count",
            ),
            (
                "key_spec = { numkeys = 2, last = 3 }",
                "unknown field `last` in the numkeys form",
            ),
            (
                "key_spec = { channel = 1, first = 1 }",
                "unknown field `first` in the channel form",
            ),
            ("key_spec = \"ask\"", "`key_spec` must be one of"),
            ("key_spec = {}", "`key_spec` must be one of"),
            ("access = \"readonly\"", "`access` must be \"read\" or \"write\""),
            ("block = { at = -1 }", "`block` without `unit`"),
            ("block = { at = -1, unit = \"min\" }", "`unit` must be \"s\""),
            (
                "block = { at = 1, after = \"BLOCK\", unit = \"s\" }",
                "both `at` and `after`",
            ),
            ("block = { unit = \"s\" }", "needs `at` or `after`"),
            (
                "block = { at = 0, unit = \"s\" }",
                "`at = 0` is not an argument position",
            ),
            ("block = -1", "`block` must be an inline table"),
        ] {
            let p = problems_of(&with(bad));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(p[0].starts_with("commands.toml:6: GET: "), "{bad}: {p:?}");
            assert!(p[0].contains(says), "{bad}: {p:?}");
        }
    }

    #[test]
    fn subcommand_keys_start_after_the_subcommand() {
        let src = OK_ROW
            .replace("\"GET\"", "\"OBJECT ENCODING\"")
            .replace("summary =", "key_spec = { first = 1 }\nsummary =");
        let p = problems_of(&src);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("1 the subcommand; the first possible is 2"), "{p:?}");
    }

    #[test]
    fn multi_step_must_match_stride() {
        let src = "[[command]]\nname = \"MGET\"\ngroup = \"string\"\nclass = \"multi\"\nsummary = \"s\"\nkey_spec = { first = 1, last = -1, step = 2 }\nmethods = [{ sig = \"mget<K: ToRedisArgs>(key: K)\", keys = [\"key\"], stride = 1, merge = \"ordered\" }]\n";
        let p = problems_of(src);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("commands.toml:6: MGET: `key_spec` has `step = 2` but `mget` splits with `stride = 1`"),
            "{p:?}"
        );
    }
}
