//! The shape of `mredis/src`: imports point one way, down a declared order of
//! layers, and no module keeps process-global mutable state.
//!
//! Each module of the library belongs to one layer; a module may use
//! (`crate::...`) its own layer and the layers below it, never one above.
//! A new module must be given a layer here, or this test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, bottom first, and their modules.
const LAYERS: &[(&str, &[&str])] = &[
    // URLs, names, redaction.
    ("server", &["server", "shard"]),
    // Error texts and kinds; every layer above makes errors.
    ("errors", &["error"]),
    ("placement", &["placement"]),
    // The command table as data.
    ("table", &["spec"]),
    (
        "options and health checking",
        &[
            "options", "task", "connect", "mover", "health", "sentinel", "latency", "finish", "fence",
        ],
    ),
    // Topology (servers + placement), Route, how replies of every server
    // merge, the servers' own COMMAND metadata.
    ("route", &["routing", "merge", "command_book", "cache", "background"]),
    // Sans-I/O step machines, per-server results, tracing spans.
    (
        "exec machines",
        &[
            "exec",
            "migration",
            "routed",
            "driver",
            "per_server",
            "replicas",
            "telemetry",
        ],
    ),
    // The two drivers (the execution seam) and their connections.
    ("clients", &["client", "async_client", "multiplexed"]),
    // What runs on the drivers: none of them is known to the clients.
    (
        "users of the drivers",
        &["pipeline", "handle", "scan", "script", "pubsub"],
    ),
    // The public async namespace: the client with its handle and subscriber.
    ("async namespace", &["aio"]),
    // The builder lives above the clients it builds.
    ("builder", &["config", "fleet_config", "watch"]),
    ("rebalance", &["rebalance", "guide"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// Names re-exported at the crate root (`pub use module::{A, B as C}`), to
/// the module they come from.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // One statement at a time (rustfmt may spread one over several lines;
    // an attribute or `mod x {}` before it has no `;` of its own).
    let code: Vec<&str> = code_lines(lib).map(|(_, c)| c.trim()).collect();
    let code = code.join(" ");
    for statement in code.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let rest = &statement[at + "pub use ".len()..];
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',') {
            let name = name.trim();
            let shown = name.rsplit(" as ").next().unwrap_or(name).trim();
            let shown = shown.rsplit("::").next().unwrap_or(shown);
            if !shown.is_empty() {
                out.insert(shown.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// The code of a file without comments (doc links name modules freely).
fn code_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    source.lines().enumerate().filter_map(|(i, line)| {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// Every `crate::x` a file uses: (line, x).
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (line, code) in code_lines(source) {
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if rest.starts_with('{') {
                out.push((line, "{".to_string()));
                continue;
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push((line, name));
        }
    }
    out
}

/// The module a file of `src` belongs to (`placement/hashkit.rs` is
/// `placement`); None for the crate root and binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if first == "lib.rs" || first == "bin" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The problems of one module's source: imports from a layer above, names
/// that resolve to no module, grouped `crate::{...}` imports.
fn problems_of(module: &str, file: &str, source: &str, roots: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(own) = layer_of(module) else {
        return vec![format!(
            "{file}: module `{module}` has no layer in tests/tests/architecture.rs"
        )];
    };
    for (line, name) in crate_paths(source) {
        if name == "{" {
            out.push(format!(
                "{file}:{line}: write one `use crate::module::...` per module, not `crate::{{...}}`"
            ));
            continue;
        }
        let target = if layer_of(&name).is_some() {
            name.clone()
        } else if let Some(module) = roots.get(&name) {
            module.clone()
        } else {
            out.push(format!(
                "{file}:{line}: `crate::{name}` is neither a module nor a root re-export"
            ));
            continue;
        };
        let Some(theirs) = layer_of(&target) else {
            out.push(format!("{file}:{line}: module `{target}` has no layer"));
            continue;
        };
        if theirs > own {
            out.push(format!(
                "{file}:{line}: `{module}` (layer {}) uses `crate::{name}` from `{target}` (layer {}), which is above it",
                LAYERS[own].0, LAYERS[theirs].0
            ));
        }
    }
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mredis/src")
}

#[test]
fn imports_point_down_the_layers() {
    let src = src_dir();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let roots = root_names(&lib);
    assert!(
        roots.contains_key("MRedis") && roots.contains_key("Builder"),
        "{roots:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let source = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        problems.extend(problems_of(&module, &shown, &source, &roots));
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} files checked");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Module -> the modules it uses (`crate::x`, root re-exports resolved).
fn module_graph() -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = src_dir();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let roots = root_names(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let source = std::fs::read_to_string(file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for (_, name) in crate_paths(&source) {
            let target = if layer_of(&name).is_some() {
                Some(name)
            } else {
                roots.get(&name).cloned()
            };
            if let Some(t) = target.filter(|t| *t != module) {
                uses.insert(t);
            }
        }
    }
    graph
}

/// A circle of modules that use each other (`a -> b -> a`), if any.
fn find_circle(graph: &BTreeMap<String, std::collections::BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        graph: &BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|m| m == at) {
            let mut circle = path[i..].to_vec();
            circle.push(at.to_string());
            return Some(circle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_modules_use_each_other_in_a_circle() {
    let graph = module_graph();
    assert!(graph.len() >= 20, "{graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!("modules use each other in a circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_check_catches_a_circle() {
    let edge = |a: &str, b: &[&str]| (a.to_string(), b.iter().map(|s| s.to_string()).collect());
    let line: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &[])].into();
    assert_eq!(find_circle(&line), None);
    let circle: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"])].into();
    assert_eq!(find_circle(&circle).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn the_check_catches_an_upward_import() {
    let roots = root_names("pub use client::MRedis;\npub use config::Builder;\n");
    let source = "use crate::server::Server;\n// crate::rebalance in a comment is fine\nfn f() -> crate::Builder { todo!() }\nuse crate::nowhere::X;\nuse crate::{a, b};\n";
    let problems = problems_of("error", "error.rs", source, &roots);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("error.rs:3") && problems[0].contains("`config` (layer builder)"));
    assert!(problems[1].contains("crate::nowhere"));
    assert!(problems[2].contains("one `use crate::module::...`"));
    assert!(problems_of("nova", "nova.rs", "", &roots)[0].contains("has no layer"));
    assert!(problems_of("rebalance", "rebalance.rs", source.lines().next().unwrap(), &roots).is_empty());
}

#[test]
fn no_process_global_mutable_state() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&source) {
            let code = code.trim_start();
            let is_static = code.starts_with("static ")
                || code.starts_with("pub static ")
                || code.starts_with("pub(crate) static ");
            let mutable = ["Mutex", "RwLock", "Atomic", "Cell<", "OnceLock", "static mut"]
                .iter()
                .any(|m| code.contains(m));
            if (is_static && mutable) || code.contains("thread_local!") {
                found.push(format!("{}:{line}: {code}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "process-global mutable state:\n{}", found.join("\n"));
}
