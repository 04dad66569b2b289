//! Keeps the layers of ARCHITECTURE.md honest: no module of `src/` uses a module of a layer above
//! its own.
//!
//! ARCHITECTURE.md's "## Layers" table lists the layers top first, each row naming its modules as
//! crate paths in backticks (a directory's module, such as `op`, covers every file under it unless
//! a longer path such as `op::kind` is listed too). A module may use modules of its own layer and
//! of the layers below; there are no exceptions. This test reads every `.rs` file under `src/`, finds each `crate::` and `super::` path
//! outside comments and outside the trailing `#[cfg(test)] mod` (unit tests may reach anywhere),
//! and fails with one line per upward use, naming both modules and their layers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One row of the table: its label (`3. faces`) and its modules, each as path segments.
struct Layer {
    label: String,
    modules: Vec<Vec<String>>,
}

/// The layers of ARCHITECTURE.md's "## Layers" section, top first.
fn parse_layers(doc: &str) -> Result<Vec<Layer>, String> {
    let start = doc
        .find("\n## Layers")
        .ok_or("ARCHITECTURE.md has no \"## Layers\" section")?;
    let section = &doc[start + 1..];
    let section = match section[2..].find("\n## ") {
        Some(end) => &section[..end + 2],
        None => section,
    };
    let mut layers = Vec::new();
    for line in section.lines() {
        let line = line.trim();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| label | modules |` splits into ["", label, modules, ""].
        if cells.len() < 4 || cells[1] == "layer" || cells[1].starts_with("---") {
            continue;
        }
        let modules: Vec<Vec<String>> = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|m| m.split("::").map(str::to_owned).collect())
            .collect();
        if modules.is_empty() {
            return Err(format!("Layers row without modules in backticks: {line}"));
        }
        layers.push(Layer {
            label: cells[1].to_owned(),
            modules,
        });
    }
    if layers.is_empty() {
        return Err("the \"## Layers\" section has no rows".into());
    }
    Ok(layers)
}

/// The layer (index, top first) and module entry of a crate path: the longest listed module that
/// is a prefix of it. A path that names no listed module is an item of the crate root (`lib`).
fn layer_of(layers: &[Layer], path: &[String]) -> Option<(usize, String)> {
    let mut best: Option<(usize, usize)> = None;
    for (i, layer) in layers.iter().enumerate() {
        for m in &layer.modules {
            if m.len() <= path.len()
                && m[..] == path[..m.len()]
                && best.is_none_or(|(_, len)| m.len() > len)
            {
                best = Some((i, m.len()));
            }
        }
    }
    match best {
        Some((i, len)) => Some((i, path[..len].join("::"))),
        None if path != ["lib"] => layer_of(layers, &["lib".to_owned()]),
        None => None,
    }
}

/// The module path of a file under `src/`: `src/shard/runner.rs` -> `shard::runner`,
/// `src/shard/mod.rs` -> `shard`, `src/lib.rs` -> `lib`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src/");
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = segs.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        segs.push(stem.to_owned());
    }
    segs
}

/// The text of a Rust file without comments, string contents and the unit tests at its end.
fn code_of(text: &str) -> String {
    let cut = text
        .find("#[cfg(test)]\nmod ")
        .or_else(|| text.find("#[cfg(test)]\npub(crate) mod "))
        .unwrap_or(text.len());
    let text = &text[..cut];
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // A string literal: skipped (a `crate::` in a message is not a use). Raw strings
            // with quotes inside are not used in src/.
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Every path that follows `crate::` or `super::` in `code`, expanded through `{..}` groups, as
/// (anchor, segments): `use crate::{a::b, c::{d, e}}` gives `a::b`, `c::d`, `c::e`.
fn paths_in(code: &str) -> Vec<(&'static str, Vec<String>)> {
    let mut found = Vec::new();
    for anchor in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + anchor.len()..];
            rest = after;
            // `foo_crate::x` or `self.super::` is not this anchor.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut trees = Vec::new();
            use_tree(after, Vec::new(), &mut trees);
            let name = if anchor == "crate::" {
                "crate"
            } else {
                "super"
            };
            found.extend(trees.into_iter().map(|t| (name, t)));
        }
    }
    found
}

/// Parses one use tree at the start of `s` (after `crate::`), pushing each full path.
fn use_tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() {
                    return i;
                }
                if b[i] == b'}' {
                    return i + 1;
                }
                i += use_tree(&s[i..], path.clone(), out);
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i > start {
            path.push(s[start..i].to_owned());
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        if !path.is_empty() {
            out.push(path);
        }
        return i;
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What the crate root re-exports: the name at the root -> the path it stands for
/// (`pub use op::fadvise::Advice;` maps `Advice` to `op::fadvise::Advice`), so that a use of
/// `crate::Advice` counts as a use of the module that defines it.
fn root_reexports(lib_code: &str) -> Vec<(String, Vec<String>)> {
    let mut map = Vec::new();
    let mut rest = lib_code;
    while let Some(at) = rest.find("pub use ") {
        rest = &rest[at + "pub use ".len()..];
        let tree = rest.trim_start_matches("crate::");
        let mut paths = Vec::new();
        use_tree(tree, Vec::new(), &mut paths);
        let end = rest.find(';').unwrap_or(rest.len());
        let renames = &rest[..end];
        for path in paths {
            let Some(last) = path.last() else { continue };
            // `pub use a::B as C;`: the root name is C.
            let name = match renames.find(&format!("{last} as ")) {
                Some(r) => renames[r + last.len() + 4..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or(last)
                    .to_owned(),
                None => last.clone(),
            };
            map.push((name, path));
        }
    }
    map
}

/// `path` with a root re-export at its head replaced by the path it stands for.
fn through_reexports(map: &[(String, Vec<String>)], path: Vec<String>) -> Vec<String> {
    match map.iter().find(|(name, _)| Some(name) == path.first()) {
        Some((_, real)) => real
            .iter()
            .cloned()
            .chain(path[1..].iter().cloned())
            .collect(),
        None => path,
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let layers = parse_layers(&doc).unwrap_or_else(|e| panic!("{e}"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let reexports = root_reexports(&code_of(&lib));
    let mut problems = BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        let shown = file.strip_prefix(root).expect("under root").display();
        let Some((own, own_entry)) = layer_of(&layers, &module) else {
            continue; // lib.rs: the top, it may use anything
        };
        if own_entry == "lib" && module != ["lib"] {
            problems.insert(format!(
                "{shown} (module `{}`) is in no row of ARCHITECTURE.md's Layers table: add it",
                module.join("::")
            ));
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read source");
        for (anchor, path) in paths_in(&code_of(&text)) {
            let full: Vec<String> = if anchor == "crate" {
                through_reexports(&reexports, path)
            } else {
                // `super::` names the parent of the file's module: `a` from `a::b` (a file
                // `a/b.rs`), the root from `a` (a file `a/mod.rs`).
                let mut base = module.clone();
                base.pop();
                base.extend(path);
                base
            };
            if full.is_empty() {
                continue;
            }
            let Some((theirs, their_entry)) = layer_of(&layers, &full) else {
                continue;
            };
            if theirs < own {
                problems.insert(format!(
                    "{shown} (`{own_entry}`, layer {}) uses `crate::{}` of `{their_entry}` \
                     (layer {}), a layer above it",
                    layers[own].label,
                    full.join("::"),
                    layers[theirs].label,
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "modules use modules of a higher layer (ARCHITECTURE.md, \"## Layers\": a module may use \
         its own layer and those below; move the code to the layer it belongs to, or invert the \
         dependency with a trait defined below):\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_parser_reads_use_trees_comments_and_strings() {
    let code = code_of(
        "use crate::{a::b, c::{d, e::f}};\n// use crate::hidden;\nlet s = \"crate::nope\";\n\
         fn x() -> crate::g::H { super::k::l() }\n/* crate::also_hidden */\n\
         #[cfg(test)]\nmod tests { use crate::top; }\n",
    );
    let paths: Vec<String> = paths_in(&code)
        .into_iter()
        .map(|(a, p)| format!("{a}:{}", p.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            "crate:a::b",
            "crate:c::d",
            "crate:c::e::f",
            "crate:g::H",
            "super:k::l"
        ]
    );
}

#[test]
fn root_reexports_stand_for_their_modules() {
    let map = root_reexports(&code_of(
        "pub use op::fadvise::{Advice, Other as Renamed};\npub use error::Error as IoErr;\n",
    ));
    let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        through_reexports(&map, p("Advice::Normal")),
        p("op::fadvise::Advice::Normal")
    );
    assert_eq!(
        through_reexports(&map, p("Renamed")),
        p("op::fadvise::Other")
    );
    assert_eq!(through_reexports(&map, p("IoErr")), p("error::Error"));
    assert_eq!(through_reexports(&map, p("local")), p("local"));
}

#[test]
fn the_longest_listed_module_decides_the_layer() {
    let doc = "# x\n\n## Layers\n| layer | modules |\n|---|---|\n| 1. api | `lib` |\n\
               | 2. faces | `executor`, `shard::tasks` |\n| 3. core | `shard` |\n\n## Next\n| a | `b` |\n";
    let layers = parse_layers(doc).expect("parses");
    assert_eq!(layers.len(), 3);
    let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        layer_of(&layers, &p("shard::tasks::spawn")),
        Some((1, "shard::tasks".into()))
    );
    assert_eq!(
        layer_of(&layers, &p("shard::runner::Shard")),
        Some((2, "shard".into()))
    );
    // A root item that is not a re-export belongs to lib, the top.
    assert_eq!(layer_of(&layers, &p("Error")), Some((0, "lib".into())));
    assert_eq!(layer_of(&layers, &p("lib")), Some((0, "lib".into())));
}
