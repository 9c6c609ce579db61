//! Every object-store call of an output, retried: a failure that may pass (a server error, a
//! timeout: `Generic`, `JoinError`) is tried again with backoff; a definite answer (not found,
//! already exists, refused) is not. One layer around the output's store, so quotaflow's own
//! calls and delta-rs's log reads and commits go through the same rule.
//!
//! A retried conditional put whose first attempt landed answers "already exists": for a Delta
//! commit that is a commit by "someone else" at that version, which delta-rs resolves against
//! the log, and the snapshot's `txn` then says it is done (METRICS.md, "Where the tables live").

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Calls of one operation before its error is returned.
const ATTEMPTS: u32 = 5;
const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// `call`, retried while it fails with an error that may pass.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(
                e @ (object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }),
            ) if attempt < ATTEMPTS => {
                tracing::debug!(error = %e, what, attempt, "object-store call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A store whose every call is retried (see the module doc).
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Retrying {
        Retrying { inner }
    }
}

impl fmt::Display for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Retrying {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        retrying("put", || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        retrying("put_multipart", || {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        retrying("get", || self.inner.get_opts(location, options.clone())).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        retrying("get_ranges", || self.inner.get_ranges(location, ranges)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    /// A listing is read whole under the retry (a failure part-way lists again), then
    /// streamed: listings here are of one table's log or one snapshot's files.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            retrying("list", || {
                inner.list(prefix.as_ref()).try_collect::<Vec<_>>()
            })
            .await
        })
        .map_ok(|all| futures::stream::iter(all.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        retrying("list", || self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        retrying("copy", || self.inner.copy_opts(from, to, options.clone())).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use object_store::ObjectStoreExt;

    /// Fails every other call with an error that may pass.
    #[derive(Debug, Default)]
    struct EveryOther {
        inner: object_store::memory::InMemory,
        calls: AtomicU64,
    }

    impl EveryOther {
        fn strike(&self) -> Result<()> {
            if self.calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return Err(object_store::Error::Generic {
                    store: "test",
                    source: "flaky".into(),
                });
            }
            Ok(())
        }
    }

    impl fmt::Display for EveryOther {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "EveryOther")
        }
    }

    #[async_trait]
    impl ObjectStore for EveryOther {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.strike()?;
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.strike()?;
            self.inner.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.strike()?;
            self.inner.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.inner.delete_stream(l)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            match self.strike() {
                Ok(()) => self.inner.list(prefix),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.strike()?;
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
            self.strike()?;
            self.inner.copy_opts(from, to, o).await
        }
    }

    #[tokio::test]
    async fn a_flaky_store_behind_it_answers_every_call() {
        let flaky = Arc::new(EveryOther::default());
        let store = Retrying::new(Arc::clone(&flaky) as Arc<dyn ObjectStore>);
        for i in 0..10 {
            let p = Path::from(format!("x/{i}"));
            store.put(&p, PutPayload::from("a")).await.unwrap();
            assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "a");
        }
        let listed: Vec<_> = store
            .list(Some(&Path::from("x")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 10);
        // Every call failed once first.
        assert_eq!(flaky.calls.load(Ordering::Relaxed), 2 * 21);
    }

    #[tokio::test]
    async fn a_definite_answer_is_not_retried() {
        let store = Retrying::new(Arc::new(object_store::memory::InMemory::new()));
        let err = store.get(&Path::from("missing")).await.unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    }
}
