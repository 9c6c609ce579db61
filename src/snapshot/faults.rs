//! Fault injection for the storage tests: when `QUOTAFLOW_STORE_FAULTS` is set (for example
//! `error=0.2,slow_ms=30`), every object-store call of the process first waits `slow_ms`, then
//! fails with probability `error` (an injected error, as a flaky server gives) or hangs for
//! `timeout_ms` and fails with probability `timeout`. Reads from tests and other processes
//! are unaffected. Never set in production.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rand::Rng;

/// The environment variable that turns fault injection on.
pub const ENV: &str = "QUOTAFLOW_STORE_FAULTS";

/// What to inject.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    pub error: f64,
    pub timeout: f64,
    pub timeout_ms: u64,
    pub slow_ms: u64,
}

impl Faults {
    /// Parses `error=0.2,timeout=0.05,timeout_ms=2000,slow_ms=30`.
    pub fn parse(spec: &str) -> std::result::Result<Faults, String> {
        let mut f = Faults {
            timeout_ms: 2000,
            ..Faults::default()
        };
        for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{ENV}: `{part}` is not key=value"))?;
            let bad = || format!("{ENV}: `{v}` is not a valid {k}");
            match k.trim() {
                "error" => f.error = v.parse().map_err(|_| bad())?,
                "timeout" => f.timeout = v.parse().map_err(|_| bad())?,
                "timeout_ms" => f.timeout_ms = v.parse().map_err(|_| bad())?,
                "slow_ms" => f.slow_ms = v.parse().map_err(|_| bad())?,
                other => return Err(format!("{ENV}: unknown key `{other}`")),
            }
        }
        Ok(f)
    }
}

/// A store that injects `Faults` before delegating.
#[derive(Debug)]
pub struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl Faulty {
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Faults) -> Faulty {
        Faulty { inner, faults }
    }

    async fn strike(&self, what: &str) -> Result<()> {
        let f = self.faults;
        if f.slow_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.slow_ms)).await;
        }
        let roll: f64 = rand::thread_rng().gen();
        if roll < f.error {
            return Err(injected(what, "injected error"));
        }
        if roll < f.error + f.timeout {
            tokio::time::sleep(Duration::from_millis(f.timeout_ms)).await;
            return Err(injected(what, "injected timeout"));
        }
        Ok(())
    }
}

fn injected(what: &str, kind: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("{kind} in {what}").into(),
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.strike("put").await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.strike("put_multipart").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.strike("get").await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.strike("get_ranges").await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if rand::thread_rng().gen::<f64>() < self.faults.error {
            let err = injected("list", "injected error");
            return futures::stream::once(async move { Err(err) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.strike("list").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.strike("copy").await?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn parses_the_spec_and_names_what_is_wrong() {
        let f = Faults::parse("error=0.2, slow_ms=30").unwrap();
        assert_eq!((f.error, f.slow_ms, f.timeout_ms), (0.2, 30, 2000));
        assert!(Faults::parse("error=lots").unwrap_err().contains("error"));
        assert!(Faults::parse("boom=1").unwrap_err().contains("boom"));
    }

    #[tokio::test]
    async fn errors_at_the_rate_asked() {
        let store = Faulty::new(
            Arc::new(object_store::memory::InMemory::new()),
            Faults::parse("error=1").unwrap(),
        );
        let p = Path::from("x");
        assert!(store.put(&p, PutPayload::from("a")).await.is_err());
        let store = Faulty::new(
            Arc::new(object_store::memory::InMemory::new()),
            Faults::default(),
        );
        assert!(store.put(&p, PutPayload::from("a")).await.is_ok());
    }
}
