//! Compiles the shipped SQL in: `$OUT_DIR/builtin_sql.rs` lists every `.sql` file under `sql/`
//! (by file name, as the built-in pipeline names them), so the list is never kept by hand.

use std::path::{Path, PathBuf};

fn main() -> Result<(), String> {
    let env = |k: &str| std::env::var(k).map_err(|e| format!("{k}: {e}"));
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let sql = root.join("sql");
    // A directory: cargo rescans everything under it for changes.
    println!("cargo:rerun-if-changed=sql");
    let mut files = Vec::new();
    collect(&sql, &mut files)?;
    files.sort();
    let mut out = String::from("&[\n");
    let mut names: Vec<String> = Vec::new();
    for f in &files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 file name", f.display()))?
            .to_string();
        if names.contains(&name) {
            return Err(format!(
                "two files under sql/ are named {name}: the built-in pipeline finds them by file name"
            ));
        }
        // Relative to the package, resolved when the crate compiles: the build script's output
        // may be reused by a checkout at another path sharing the target directory.
        let rel = f
            .strip_prefix(&root)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .to_str()
            .ok_or_else(|| format!("{}: not a UTF-8 path", f.display()))?
            .to_string();
        out.push_str(&format!(
            "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{rel}\"))),\n"
        ));
        names.push(name);
    }
    out.push(']');
    let dest = PathBuf::from(env("OUT_DIR")?).join("builtin_sql.rs");
    std::fs::write(&dest, out).map_err(|e| format!("{}: {e}", dest.display()))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let read = |e: std::io::Error| format!("{}: {e}", dir.display());
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
    Ok(())
}
