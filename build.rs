//! Compiles the shipped SQL in: `$OUT_DIR/builtin_sql.rs` lists every `.sql` file under `sql/`
//! (by file name, as the built-in pipeline names them), so the list is never kept by hand.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let sql = root.join("sql");
    // A directory: cargo rescans everything under it for changes.
    println!("cargo:rerun-if-changed=sql");
    let mut files = Vec::new();
    collect(&sql, &mut files);
    files.sort();
    let mut out = String::from("&[\n");
    let mut names: Vec<String> = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("SQL file names are UTF-8")
            .to_string();
        assert!(
            !names.contains(&name),
            "two files under sql/ are named {name}: the built-in pipeline finds them by file name"
        );
        out.push_str(&format!("    ({name:?}, include_str!({:?})),\n", f.display().to_string()));
        names.push(name);
    }
    out.push(']');
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_sql.rs");
    std::fs::write(dest, out).expect("write builtin_sql.rs");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read sql/") {
        let path = entry.expect("read sql/").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
}
