//! The default pipeline and every SQL file under `sql/`, compiled in so that `quotaflow demo`
//! needs no files. The SQL list comes from the folder (`build.rs`), never kept by hand.

/// `pipelines/default.toml`.
pub const PIPELINE: &str = include_str!("../../pipelines/default.toml");

/// (file name, text) of every `.sql` file under `sql/`.
pub const SQL: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_sql.rs"));

/// The built-in SQL file a pipeline's `sql = "<path>"` names, by its file name.
pub fn sql(path: &str) -> Result<String, String> {
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path);
    SQL.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| text.to_string())
        .ok_or_else(|| format!("no built-in SQL file named {name}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sql_file_is_built_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut on_disk = 0;
        for entry in walk(&dir) {
            on_disk += 1;
            let name = entry.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&entry).unwrap();
            assert_eq!(super::sql(&name).unwrap(), text, "{name}");
        }
        assert_eq!(super::SQL.len(), on_disk);
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "sql") {
                out.push(p);
            }
        }
        out
    }
}
