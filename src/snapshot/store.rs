//! Object-store URLs → an `ObjectStore` plus the prefix under it. `file://` (or a plain path),
//! `memory://NAME` (process-wide, for tests), `s3://`, `gs://` and `az://` with credentials from
//! the environment and the providers' standard chains — never from the pipeline file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use super::SnapshotError;

/// Where snapshots go: a store and a prefix inside it.
#[derive(Debug, Clone)]
pub struct Location {
    pub url: Url,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Location {
    /// Parses an output URL (or a local path) and builds its store. A local directory is
    /// created if missing; nothing else touches the network here.
    pub fn parse(output: &str) -> Result<Location, SnapshotError> {
        let bad = |message: String| SnapshotError::Url {
            url: output.to_string(),
            message,
        };
        let url = match Url::parse(output) {
            Ok(u) if u.scheme().len() > 1 => u,
            _ => {
                // A plain path (no scheme, or a Windows drive letter).
                std::fs::create_dir_all(output)
                    .map_err(|e| bad(format!("cannot create directory: {e}")))?;
                let abs = std::fs::canonicalize(output).map_err(|e| bad(e.to_string()))?;
                Url::from_directory_path(&abs).map_err(|_| bad("not an absolute path".into()))?
            }
        };
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| bad("not a local path".into()))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create directory: {e}")))?;
                Arc::new(object_store::local::LocalFileSystem::new())
            }
            "memory" => {
                let name = url.host_str().unwrap_or("default").to_string();
                let mut stores = memory_stores()
                    .lock()
                    .map_err(|_| bad("memory store registry poisoned".into()))?;
                stores
                    .entry(name)
                    .or_insert_with(|| Arc::new(InMemory::new()))
                    .clone()
            }
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}` (file, memory, s3, gs, az)"
                )))
            }
        };
        let store = match std::env::var(super::faults::ENV) {
            Ok(spec) => {
                let faults = super::faults::Faults::parse(&spec).map_err(bad)?;
                tracing::warn!(
                    ?faults,
                    "injecting object-store faults ({})",
                    super::faults::ENV
                );
                Arc::new(super::faults::Faulty::new(store, faults)) as Arc<dyn ObjectStore>
            }
            Err(_) => store,
        };
        let store = Arc::new(super::retry::Retrying::new(store)) as Arc<dyn ObjectStore>;
        // For file:// the store is rooted at `/`, so the prefix is the whole path; for buckets
        // the URL's path is the prefix inside the bucket.
        Ok(Location { url, store, prefix })
    }

    /// `prefix/rel`.
    pub fn path(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }
}
