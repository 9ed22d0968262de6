//! The layout states the data flow: `lib.rs` lists a few top-level modules in flow order,
//! no module imports from one later in the flow, and no file imports — directly or through
//! other files — from itself (a cycle between files is a cycle even inside one module).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in the order `lib.rs` declares them.
fn flow() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
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

/// Every top-level module a file names as `crate::NAME`.
fn imports(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn no_module_imports_from_later_in_the_flow() {
    let flow = flow();
    assert!(
        (5..=10).contains(&flow.len()),
        "lib.rs should list a handful of modules, not {}",
        flow.len()
    );
    let mut violations = Vec::new();
    for (rank, module) in flow.iter().enumerate() {
        let mut files = Vec::new();
        let dir = src().join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src().join(format!("{module}.rs")));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in imports(&text) {
                let at = flow.iter().position(|m| *m == used);
                let at = at.unwrap_or_else(|| panic!("{}: crate::{used} is not a top-level module", file.display()));
                if at > rank {
                    violations.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports against the flow: {violations:#?}");
}

/// The check above would catch a backward import: it finds the names a file uses.
#[test]
fn imports_are_found() {
    let text = "use crate::diffusion::solver::Solver;\nlet x = crate::nets::mlp::Mlp::new();";
    assert_eq!(imports(text), vec!["diffusion", "nets"]);
}

/// Source text by path relative to `src/` (`data/toy.rs`).
type Files = BTreeMap<String, String>;

/// Which files each file imports from, by path relative to `src/`.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// A file's tokens, as far as paths go: comments, doc comments and literals carry no paths.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Open,
    Close,
    Comma,
    Star,
    /// Other punctuation, a literal or a lifetime's quote.
    Other,
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn tokens(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let (tok, next) = match c[i] {
            w if w.is_whitespace() => (None, i + 1),
            '/' if at(i + 1) == '/' => (None, (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())),
            '/' if at(i + 1) == '*' => (None, block_comment_end(&c, i)),
            '"' => (Some(Tok::Other), string_end(&c, i + 1, None)),
            '\'' => (Some(Tok::Other), quote_end(&c, i)),
            w if w.is_alphabetic() || w == '_' => word(&c, i),
            w if w.is_ascii_digit() => (
                Some(Tok::Other),
                (i..=c.len()).find(|&k| !is_ident_char(at(k))).unwrap(),
            ),
            ':' if at(i + 1) == ':' => (Some(Tok::Sep), i + 2),
            '{' => (Some(Tok::Open), i + 1),
            '}' => (Some(Tok::Close), i + 1),
            ',' => (Some(Tok::Comma), i + 1),
            '*' => (Some(Tok::Star), i + 1),
            _ => (Some(Tok::Other), i + 1),
        };
        out.extend(tok);
        i = next;
    }
    out
}

/// Past the block comment opening at `i` (block comments nest).
fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match (c[i], c.get(i + 1).copied()) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) => {
                (depth, i) = (depth - 1, i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    i
}

/// Past the string whose text starts at `i`; `raw`: the `#` count of a raw string (no escapes).
fn string_end(c: &[char], mut i: usize, raw: Option<usize>) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' if raw.is_none() => i += 2,
            '"' => {
                let hashes = raw.unwrap_or(0);
                if (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    return i + 1 + hashes;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Past a char literal at `i` (`'x'`, `'\n'`), or just past the quote of a lifetime.
fn quote_end(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        (i + 3..c.len()).find(|&k| c[k] == '\'').map_or(c.len(), |k| k + 1)
    } else if c.get(i + 2) == Some(&'\'') {
        i + 3
    } else {
        i + 1
    }
}

/// An identifier at `i`, or the (byte, C, raw) string or byte literal it prefixes.
fn word(c: &[char], i: usize) -> (Option<Tok>, usize) {
    let end = (i..=c.len())
        .find(|&k| !c.get(k).is_some_and(|&ch| is_ident_char(ch)))
        .unwrap();
    let w: String = c[i..end].iter().collect();
    let hashes = (end..c.len()).take_while(|&k| c[k] == '#').count();
    match (w.as_str(), c.get(end), c.get(end + hashes)) {
        ("r" | "br" | "cr", _, Some('"')) => (Some(Tok::Other), string_end(c, end + hashes + 1, Some(hashes))),
        ("b" | "c", Some('"'), _) => (Some(Tok::Other), string_end(c, end + 1, None)),
        ("b", Some('\''), _) => (Some(Tok::Other), quote_end(c, end)),
        _ => (Some(Tok::Ident(w)), end),
    }
}

/// The paths a file in module `here` names from `crate`, `super`, `self` or one of its
/// `children` (as `toy::Toy` in `data/mod.rs`), made absolute, `use` groups expanded.
/// A declaration (`pub mod toy;`) names no path; a re-export (`pub use toy::Toy;`) does.
fn named_paths(here: &[String], children: &BTreeSet<String>, toks: &[Tok]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // One entry per open brace: the inline module it opens (`mod tests {`), if any.
    let mut inline: Vec<Option<String>> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Open => inline.push(inline_module(toks, i)),
            Tok::Close => {
                inline.pop();
            }
            Tok::Ident(first) if starts_path(toks, i) => {
                let current = || here.iter().chain(inline.iter().flatten()).cloned().collect();
                let (base, mut j) = match first.as_str() {
                    "crate" => (Vec::new(), i + 2),
                    "super" | "self" => (current(), i),
                    name if children.contains(name) => (here.to_vec(), i),
                    _ => (Vec::new(), usize::MAX),
                };
                if j != usize::MAX {
                    out.extend(tree(toks, &mut j, base));
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn starts_path(toks: &[Tok], i: usize) -> bool {
    toks.get(i + 1) == Some(&Tok::Sep) && (i == 0 || toks[i - 1] != Tok::Sep)
}

/// `NAME` when the brace at `i` follows `mod NAME`.
fn inline_module(toks: &[Tok], i: usize) -> Option<String> {
    match toks.get(i.checked_sub(2)?..i)? {
        [Tok::Ident(m), Tok::Ident(name)] if m == "mod" => Some(name.clone()),
        _ => None,
    }
}

/// The paths of the path or `use` tree at `j` (`a::b`, `a::{self, b::{c as d}}`, `a::*`),
/// each appended to `path`; leaves `j` past it.
fn tree(toks: &[Tok], j: &mut usize, mut path: Vec<String>) -> Vec<Vec<String>> {
    loop {
        match toks.get(*j) {
            Some(Tok::Ident(s)) => {
                match s.as_str() {
                    "self" => {}
                    "super" => {
                        path.pop();
                    }
                    _ => path.push(s.clone()),
                }
                *j += 1;
                if toks.get(*j) != Some(&Tok::Sep) {
                    return vec![path];
                }
                *j += 1;
            }
            Some(Tok::Open) => return group(toks, j, &path),
            Some(Tok::Star) => {
                *j += 1;
                return vec![path];
            }
            _ => return vec![path],
        }
    }
}

/// The trees of the `{…}` group at `j`, each under `prefix`.
fn group(toks: &[Tok], j: &mut usize, prefix: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    *j += 1;
    while let Some(tok) = toks.get(*j) {
        match tok {
            Tok::Close => {
                *j += 1;
                break;
            }
            Tok::Ident(a) if a == "as" => *j += 2,
            Tok::Ident(_) | Tok::Open | Tok::Star => out.extend(tree(toks, j, prefix.to_vec())),
            _ => *j += 1,
        }
    }
    out
}

/// A file's module path (`data/mod.rs` → `data`, `lib.rs` → the root); `None` for `main.rs`,
/// the binary, which is a crate of its own.
fn module_of(file: &str) -> Option<Vec<String>> {
    let stem = file.strip_suffix(".rs")?;
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    match stem {
        "main" => return None,
        "lib" => parts.clear(),
        _ if stem.ends_with("/mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts)
}

/// Each file's imports: every path it names, resolved to the longest module that has a file.
fn graph(files: &Files) -> Graph {
    let modules: BTreeMap<Vec<String>, &String> = files.keys().filter_map(|f| Some((module_of(f)?, f))).collect();
    let resolve = |path: &[String]| (0..=path.len()).rev().find_map(|n| modules.get(&path[..n]).copied());
    let mut graph = Graph::new();
    for (here, &file) in &modules {
        let children = modules
            .keys()
            .filter(|m| m.len() == here.len() + 1 && m.starts_with(here))
            .map(|m| m[here.len()].clone())
            .collect();
        let edges = named_paths(here, &children, &tokens(&files[file]))
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|&to| to != file)
            .cloned()
            .collect();
        graph.insert(file.clone(), edges);
    }
    graph
}

/// Tarjan's strongly connected components of more than one file.
struct Tarjan<'g> {
    graph: &'g Graph,
    index: BTreeMap<&'g str, usize>,
    low: BTreeMap<&'g str, usize>,
    stack: Vec<&'g str>,
    components: Vec<Vec<&'g str>>,
}

impl<'g> Tarjan<'g> {
    fn components(graph: &'g Graph) -> Vec<Vec<&'g str>> {
        let mut t = Tarjan {
            graph,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            components: Vec::new(),
        };
        for v in graph.keys() {
            if !t.index.contains_key(v.as_str()) {
                t.visit(v);
            }
        }
        t.components
    }

    fn visit(&mut self, v: &'g str) {
        let n = self.index.len();
        self.index.insert(v, n);
        self.low.insert(v, n);
        self.stack.push(v);
        let graph = self.graph;
        for w in &graph[v] {
            let w = w.as_str();
            if !self.index.contains_key(w) {
                self.visit(w);
                self.low.insert(v, self.low[v].min(self.low[w]));
            } else if self.stack.contains(&w) {
                self.low.insert(v, self.low[v].min(self.index[w]));
            }
        }
        if self.low[v] == self.index[v] {
            let at = self.stack.iter().rposition(|&u| u == v).unwrap();
            let component = self.stack.split_off(at);
            if component.len() > 1 {
                self.components.push(component);
            }
        }
    }
}

/// The shortest cycle through `start` inside `component`, in import order.
fn shortest_cycle(graph: &Graph, component: &BTreeSet<&str>, start: &str) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].iter().map(String::as_str) {
            if w == start {
                let mut cycle = vec![v.to_string()];
                while let Some(&u) = came_from.get(cycle.last().unwrap().as_str()) {
                    cycle.push(u.to_string());
                }
                cycle.reverse();
                return cycle;
            }
            if component.contains(w) && w != start && !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component")
}

/// The import cycles between files: for each file on one, the shortest cycle through it,
/// starting at its smallest file.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for component in Tarjan::components(graph) {
        let members: BTreeSet<&str> = component.into_iter().collect();
        for &start in &members {
            let mut cycle = shortest_cycle(graph, &members, start);
            let first = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
            cycle.rotate_left(first);
            found.insert(cycle);
        }
    }
    found.into_iter().collect()
}

fn source_files() -> Files {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

#[test]
fn no_import_cycle_between_files() {
    let graph = graph(&source_files());
    assert!(graph.len() > 50, "only {} files found in src/", graph.len());
    let listed: Vec<String> = cycles(&graph)
        .iter()
        .map(|c| {
            c.iter()
                .chain(&c[..1])
                .map(|f| format!("src/{f}"))
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .collect();
    assert!(listed.is_empty(), "import cycles between files:\n{}", listed.join("\n"));
}

/// A planted cycle through a grouped `use`, a child-relative re-export and `super::super`
/// from a test module; comments, strings and `mod` declarations name nothing.
fn planted() -> Files {
    [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
        (
            "a/mod.rs",
            "//! Uses crate::c.\npub mod x;\npub mod y;\n\npub use y::Y;",
        ),
        (
            "a/x.rs",
            "use crate::{b::{self, inner::{B, D as E}}, c};\nuse std::fmt::Debug;",
        ),
        (
            "a/y.rs",
            "/* crate::b /* nested */ crate::c */\nconst S: &str = \"crate::c\";\nconst Q: char = '{';\n\
             pub struct Y<'a>(&'a str);\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::x::X;\n}",
        ),
        ("b/mod.rs", "pub mod inner;\n/// crate::a::Y\npub struct B;"),
        ("b/inner.rs", "pub struct D(super::B);"),
        ("c.rs", "use crate::a::Y;"),
    ]
    .into_iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect()
}

#[test]
fn planted_cycle_is_found() {
    let files = planted();
    let found = graph(&files);
    let edges = |f: &str| found[f].iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(edges("a/x.rs"), ["b/inner.rs", "b/mod.rs", "c.rs"], "grouped use");
    assert_eq!(edges("a/y.rs"), ["a/x.rs"], "super::super from a test module only");
    assert_eq!(edges("a/mod.rs"), ["a/y.rs"], "the re-export, not the declarations");
    assert_eq!(edges("b/inner.rs"), ["b/mod.rs"]);
    assert_eq!(edges("lib.rs"), Vec::<&str>::new());
    assert_eq!(cycles(&found), [["a/mod.rs", "a/y.rs", "a/x.rs", "c.rs"]]);

    let mut broken = files;
    broken.insert("c.rs".into(), "use crate::b::B;".into());
    assert!(cycles(&graph(&broken)).is_empty());
}

/// Every cycle of a component is listed, each from its smallest file.
#[test]
fn cycles_sharing_a_file_are_each_listed() {
    let graph: Graph = [("a", &["b", "c"][..]), ("b", &["a"]), ("c", &["d"]), ("d", &["a"])]
        .into_iter()
        .map(|(f, to)| (f.to_string(), to.iter().map(|t| t.to_string()).collect()))
        .collect();
    let want: Vec<Vec<String>> = vec![vec!["a".into(), "b".into()], vec!["a".into(), "c".into(), "d".into()]];
    assert_eq!(cycles(&graph), want);
}
