//! The layer rule of `quotaflow::LAYERS`: no module of `src/` names a module above it, in a
//! `use` or in an inline `crate::x::` path. Comments and strings do not count.

use std::collections::BTreeMap;
use std::path::Path;

use quotaflow::LAYERS;

/// The top-level modules `source` (Rust code of one file) names through `crate::`.
fn named_modules(source: &str) -> Vec<String> {
    let code = strip_comments_and_strings(source);
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `quotaflow::crate::` cannot occur; a preceding identifier char means another word
        // (e.g. `my_crate::`).
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b, c::{Y, Z}}`: the first identifier of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        out.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Blanks out `//` and `/* */` comments and string and char literals (raw strings included).
fn strip_comments_and_strings(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = s[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // r"..." or r#"..."#
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let from = i + 2 + hashes;
            i = s[from..]
                .find(&close)
                .map_or(b.len(), |e| from + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x'
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = s[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1);
            i = end; // '\n', '\''
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every `.rs` file under `src/`, by its top-level module (`src/x.rs` and `src/x/**`).
fn modules_of_src() -> BTreeMap<String, Vec<(String, String)>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue; // the crate root declares the modules; the binary sits above them all
        }
        let text = std::fs::read_to_string(&f).unwrap();
        out.entry(module)
            .or_default()
            .push((rel.display().to_string(), text));
    }
    out
}

#[test]
fn no_module_names_a_module_above_it() {
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let modules = modules_of_src();
    let mut upward = Vec::new();
    for (module, files) in &modules {
        let Some(own) = rank(module) else {
            panic!("src/{module} is not in quotaflow::LAYERS: give it its place in the order");
        };
        for (file, text) in files {
            for named in named_modules(text) {
                match rank(&named) {
                    Some(r) if r > own => upward.push(format!(
                        "src/{file} ({module}, layer {own}) names `{named}` (layer {r})"
                    )),
                    Some(_) => {}
                    None => panic!("src/{file} names `crate::{named}`, which is not a layer"),
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "upward imports (order: {}):\n{}",
        LAYERS.join(" → "),
        upward.join("\n")
    );
    // Every layer exists: the order is not a list of wishes.
    for l in LAYERS {
        assert!(
            modules.contains_key(*l),
            "quotaflow::LAYERS names `{l}`, not in src/"
        );
    }
}

#[test]
fn the_checker_sees_uses_groups_and_inline_paths_but_not_comments() {
    let code = r#"
        use crate::config::Pipeline;
        use crate::{engine::Engine, snapshot, state::{State, X}};
        // use crate::demo::Nope;
        /// See [`crate::cli`].
        fn f() { let _ = crate::pipeline::run; let s = "crate::query"; let c = 'x'; }
        /* crate::generate */
        fn g() -> my_crate::Thing { todo!() }
    "#;
    assert_eq!(
        named_modules(code),
        ["config", "engine", "snapshot", "state", "pipeline"]
    );
}

#[test]
fn no_file_in_src_is_over_600_lines() {
    let long: Vec<String> = modules_of_src()
        .into_values()
        .flatten()
        .map(|(file, text)| (file, text.lines().count()))
        .filter(|(_, n)| *n > 600)
        .map(|(file, n)| format!("src/{file}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "split these by concern:\n{}",
        long.join("\n")
    );
}
