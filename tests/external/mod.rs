//! Against the real services `scripts/test` starts: the tansu broker (QUOTAFLOW_TEST_BROKERS),
//! the moto S3 server (QUOTAFLOW_TEST_S3 + AWS_* variables), and the Python readers. The
//! pipeline runs as a separate process (the binary cargo builds with the tests). Each test uses
//! topics of its own.
//!
//! This module holds what the tests below share: the services' addresses, pipeline files with
//! topics of their own, producing the generated messages, reading snapshots as a reader does,
//! and a broker or S3 server of a test's own for the fault tests.

mod alerts_webhook;
mod alignment;
mod broker_faults;
mod crash;
mod end_to_end;
mod explain;
mod retention;
mod storage_faults;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quotaflow::config::Pipeline;
use quotaflow::snapshot::Location;

use crate::common::Cluster;
pub use crate::harness::{bin, free_port, signal};
use crate::harness::{eventually_blocking, produce as produce_msgs, renamed, PipelineFile};

/// How long a service of a test's own may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);

/// A variable `scripts/test` sets.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run this test through scripts/test"))
}

/// The suite's broker.
pub fn brokers() -> String {
    env("QUOTAFLOW_TEST_BROKERS")
}

/// A name unique to this test process.
pub fn tag(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1_000_000
    )
}

/// The default pipeline with topics unique to this test (`tag`), for the binary.
pub fn pipeline_file(dir: &Path, tag: &str, file: PipelineFile) -> (PathBuf, Arc<Pipeline>) {
    file.tag_topics(tag).write(dir, tag)
}

/// Produces the generated messages of `seed` (pipeline_mock's, with two bad ones), renamed to
/// the pipeline's topics, to the suite's broker in record batches of up to `batch` messages.
pub async fn produce(p: &Pipeline, seed: u64, batch: usize) -> Vec<(String, String, String)> {
    produce_to(&brokers(), p, seed, batch).await
}

/// `produce` to `brokers`, creating the topics (3 partitions) first.
pub async fn produce_to(
    brokers: &str,
    p: &Pipeline,
    seed: u64,
    batch: usize,
) -> Vec<(String, String, String)> {
    let default = Pipeline::builtin().unwrap();
    let msgs = renamed(p, crate::pipeline_mock::messages(&default, seed));
    let topics: Vec<&str> = p.source.topics.values().map(String::as_str).collect();
    Cluster::new(brokers, &p.source.kafka)
        .ensure_topics(&topics, 3)
        .await
        .unwrap();
    produce_msgs(brokers, batch, &msgs);
    msgs
}

/// `quotaflow run --once` on the suite's broker; asserts success, returns what it printed.
pub fn run_once(pipeline: &Path, output: &str) -> String {
    crate::harness::run_once_process(pipeline, &brokers(), output)
}

/// `quotaflow run --pipeline FILE --brokers (the suite's) --output O`.
pub fn run_command(pipeline: &Path, output: &str) -> Command {
    crate::harness::run_command(pipeline, &brokers(), output)
}

pub fn without_dead_letters(t: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    crate::pipeline_mock::without(t, "dead_letters")
}

/// Messages the manifest of the latest snapshot accounts for (0 before the first).
pub async fn durable_messages(loc: &Location) -> i64 {
    let Ok(Some(latest)) = loc.latest().await else {
        return 0;
    };
    let m = loc.checkpoint(latest.snapshot_id).await.unwrap();
    m.offsets.values().flat_map(|p| p.values()).sum()
}

/// Reads the snapshot `_latest` names, every table of it, as a reader would; panics if any
/// file it names is missing or unreadable. Returns the snapshot id (0 before the first).
pub async fn read_latest_whole(loc: &Location) -> u64 {
    let Some(latest) = loc.latest().await.unwrap() else {
        return 0;
    };
    let m = loc.checkpoint(latest.snapshot_id).await.unwrap();
    for name in m.tables.keys() {
        loc.read_table(&m, name)
            .await
            .unwrap_or_else(|e| panic!("snapshot {}: {e}", m.snapshot_id));
    }
    m.snapshot_id
}

/// A reader reading every table of whatever `_latest` names under `output`, until the flag is
/// set; it returns the snapshot ids it read whole.
pub fn spawn_reader(
    output: &str,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<std::collections::BTreeSet<u64>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (loc, flag) = (Location::parse(output).unwrap(), Arc::clone(&stop));
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            seen.insert(read_latest_whole(&loc).await);
        }
        seen
    });
    (stop, reader)
}

/// Waits until something listens on a loopback port.
fn wait_listening(what: &str, port: u16) {
    eventually_blocking(
        format_args!("{what} to listen on {port}"),
        LISTEN_WITHIN,
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// A tansu broker of the test's own (so it can be frozen or killed without touching the
/// others'), killed when dropped.
pub struct OwnBroker {
    child: std::process::Child,
    pub brokers: String,
    /// The directory it runs in (tansu opens `sqlite://` files relative to it).
    dir: PathBuf,
}

impl OwnBroker {
    /// A broker keeping its data in memory.
    pub fn start() -> OwnBroker {
        OwnBroker::spawn(free_port(), "memory://tansu/")
    }

    /// A broker keeping its data in SQLite file `file` of `dir`: tansu's engine that applies
    /// topics' retention. Returns the broker and its storage URL (for `kill_and_restart`).
    pub fn start_sqlite(dir: &Path, file: &str) -> (OwnBroker, String) {
        let storage = format!("sqlite://{file}");
        let broker = OwnBroker::spawn_in(dir, free_port(), &storage);
        (broker, storage)
    }

    /// A broker keeping its data in a bucket of the suite's S3 server, so it survives a kill.
    pub fn start_durable(bucket: &str) -> OwnBroker {
        let made = Command::new("python3")
            .args([
                "-c",
                "import boto3, os, sys; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket=sys.argv[1])",
                bucket,
            ])
            .status()
            .unwrap();
        assert!(made.success(), "creating bucket {bucket}");
        OwnBroker::spawn(free_port(), &format!("s3://{bucket}/"))
    }

    fn spawn(port: u16, storage: &str) -> OwnBroker {
        OwnBroker::spawn_in(&std::env::temp_dir(), port, storage)
    }

    fn spawn_in(dir: &Path, port: u16, storage: &str) -> OwnBroker {
        OwnBroker {
            child: OwnBroker::child(dir, port, storage),
            brokers: format!("127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        }
    }

    fn child(dir: &Path, port: u16, storage: &str) -> std::process::Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .current_dir(dir)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .env(
                "AWS_ENDPOINT",
                std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu on PATH (scripts/services installs it)");
        wait_listening("tansu", port);
        child
    }

    /// SIGKILL, then the same broker again on the same port and storage.
    pub fn kill_and_restart(&mut self, storage: &str) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        let port: u16 = self.brokers.rsplit(':').next().unwrap().parse().unwrap();
        self.child = OwnBroker::child(&self.dir, port, storage);
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3 server (moto) of the test's own, so it can be stopped without touching the others'.
pub struct OwnS3 {
    child: std::process::Child,
    pub endpoint: String,
}

impl OwnS3 {
    pub fn start(bucket: &str) -> OwnS3 {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (scripts/services installs it)");
        wait_listening("moto", port);
        let endpoint = format!("http://127.0.0.1:{port}");
        let made = Command::new("python3")
            .args([
                "-c",
                "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])",
                &endpoint,
                bucket,
            ])
            .status()
            .unwrap();
        assert!(made.success());
        OwnS3 { child, endpoint }
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
