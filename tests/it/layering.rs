//! The crate's layers, read from its own source: which module names which through its
//! `crate::…` paths (tests aside). No module may reach itself through others, and the
//! command line's types stay at the top (`main.rs`, `cli.rs`, `app/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every source file of the crate as its module path (`src/ledger/open.rs` is
/// `ledger::open`), with its text up to its unit tests.
fn modules() -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = relative
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|s| s == "mod") {
                module.pop();
            }
            // A file of its own for a module's unit tests is a test.
            if module.last().is_some_and(|s| s == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found.insert(module, without_tests_and_comments(&text));
        }
    }
    found
}

fn without_tests_and_comments(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after one `crate::`, braces expanded: `crate::{a::B, c}` names `a::B`
/// and `c`.
fn paths_after(text: &str) -> Vec<Vec<String>> {
    let mut chars = text.chars().peekable();
    tree(&mut chars)
}

fn tree(chars: &mut std::iter::Peekable<std::str::Chars>) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            Some('{') => {
                chars.next();
                let mut all = Vec::new();
                loop {
                    for path in tree(chars) {
                        all.push([segments.clone(), path].concat());
                    }
                    while chars.peek().is_some_and(|c| c.is_whitespace()) {
                        chars.next();
                    }
                    match chars.next() {
                        Some(',') => continue,
                        _ => break,
                    }
                }
                return all;
            }
            Some(c) if c.is_alphabetic() || *c == '_' => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                segments.push(word);
                let rest: String = chars.clone().take(2).collect();
                if rest != "::" {
                    return vec![segments];
                }
                chars.next();
                chars.next();
            }
            _ => return vec![segments],
        }
    }
}

/// Which modules each module names.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, text) in &modules {
        let mut named = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            for path in paths_after(&text[at + "crate::".len()..]) {
                let longest = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|prefix| modules.contains_key(prefix));
                if let Some(target) = longest.filter(|t| t != module) {
                    named.insert(target);
                }
            }
        }
        graph.insert(module.clone(), named);
    }
    graph
}

fn show(module: &Module) -> String {
    module.join("::")
}

#[test]
fn the_reader_expands_braces_and_stops_at_the_path_end() {
    let paths = paths_after("{a::B, c::{d, e::F}};\n");
    let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(shown, ["a::B", "c::d", "c::e::F"]);
    assert_eq!(
        paths_after("ledger::open::real_path(x)"),
        [["ledger", "open", "real_path"]]
    );
}

#[test]
fn no_module_reaches_itself_through_others() {
    let graph = graph();
    assert!(graph.len() > 20, "the source was not found: {graph:?}");
    for start in graph.keys() {
        // Depth-first from each module's own names, looking for a way back to it.
        let mut stack: Vec<Vec<Module>> = graph[start].iter().map(|m| vec![m.clone()]).collect();
        let mut seen = BTreeSet::new();
        while let Some(way) = stack.pop() {
            let last = way.last().unwrap();
            if last == start {
                let shown: Vec<String> = std::iter::once(start).chain(&way).map(show).collect();
                panic!("import cycle: {}", shown.join(" -> "));
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for next in graph.get(last).into_iter().flatten() {
                stack.push([way.clone(), vec![next.clone()]].concat());
            }
        }
    }
}

#[test]
fn the_command_line_stays_at_the_top() {
    let cli = vec!["cli".to_owned()];
    let allowed =
        |m: &Module| matches!(m.first().map(String::as_str), Some("main" | "cli" | "app"));
    let below: Vec<String> = graph()
        .iter()
        .filter(|(module, named)| named.contains(&cli) && !allowed(module))
        .map(|(module, _)| show(module))
        .collect();
    assert!(
        below.is_empty(),
        "below the app layer, these name crate::cli: {below:?}"
    );
}

#[test]
fn exit_codes_stay_a_leaf() {
    let graph = graph();
    let exit = vec!["exit".to_owned()];
    let named: Vec<String> = graph[&exit].iter().map(show).collect();
    assert!(named.is_empty(), "exit.rs names {named:?}");
}

/// Every SQL statement is the ledger's: a module above it asks for what it needs by name.
#[test]
fn sql_lives_only_in_the_ledger() {
    let calls = [
        ".prepare(",
        ".prepare_cached(",
        ".query_row(",
        ".execute(",
        ".execute_batch(",
    ];
    let outside: Vec<String> = modules()
        .iter()
        .filter(|(module, _)| module.first().is_some_and(|m| m != "ledger"))
        .filter(|(_, text)| calls.iter().any(|call| text.contains(call)))
        .map(|(module, _)| show(module))
        .collect();
    assert!(outside.is_empty(), "SQL outside src/ledger/: {outside:?}");
}
