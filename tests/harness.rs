//! One harness for the tests that run the pipeline, in process (`quotaflow::pipeline::run`)
//! or as the `quotaflow` binary: pipeline files, run options, producing, the HTTP endpoint, and
//! `eventually`, the one way a test waits for something to become true.
//!
//! A test never sleeps to synchronise: it waits with `eventually` for what it needs, which
//! fails naming what it waited for. A sleep that is part of a scenario (a fault that lasts a
//! while, a kill at a random moment) says so in a comment where it stands.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quotaflow::config::Pipeline;
use quotaflow::pipeline::{run, RunOptions, RunReport};

use crate::common::produce_all;

/// How often `eventually` looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// What a condition of `eventually` returns: `true` (or `Some(value)`) once it holds.
pub trait Holds {
    type Value;
    fn holds(self) -> Option<Self::Value>;
}

impl Holds for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Holds for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

fn gave_up(what: &dyn std::fmt::Display, within: Duration) -> ! {
    panic!(
        "gave up after {} s waiting for {what}",
        within.as_secs_f64()
    )
}

/// Polls the async `condition` every `POLL` until it holds (returning what it gave), and fails
/// naming `what` once `within` has passed. The condition may assert (e.g. that a child process
/// still runs) to fail sooner.
pub async fn eventually<C, F>(
    what: impl std::fmt::Display,
    within: Duration,
    mut condition: C,
) -> <F::Output as Holds>::Value
where
    C: FnMut() -> F,
    F: Future,
    F::Output: Holds,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = condition().await.holds() {
            return v;
        }
        if Instant::now() >= deadline {
            gave_up(&what, within);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for `child` to exit, up to `within`; past it, kills the child and fails with what it
/// logged (`log`), so a run that does not stop fails the test instead of hanging it.
pub fn wait_within(
    mut child: std::process::Child,
    within: Duration,
    log: &std::sync::Mutex<String>,
) -> std::process::Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the process did not exit within {} s; it logged:\n{}",
                within.as_secs_f64(),
                log.lock().unwrap()
            );
        }
        std::thread::sleep(POLL);
    }
    child.wait_with_output().unwrap()
}

/// `eventually` for code outside an async runtime (a blocking `condition`, polled on this thread).
pub fn eventually_blocking<T: Holds>(
    what: impl std::fmt::Display,
    within: Duration,
    mut condition: impl FnMut() -> T,
) -> T::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = condition().holds() {
            return v;
        }
        if Instant::now() >= deadline {
            gave_up(&what, within);
        }
        std::thread::sleep(POLL);
    }
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pipeline file under construction: the default pipeline's text with edits applied, loaded
/// in process or written to a file for the binary.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    text: String,
}

impl Default for PipelineFile {
    /// `pipelines/default.toml`, serving `/healthz` and `/metrics` on a port the system picks
    /// rather than the default one, which the demo's test binds at the same time
    /// (`http_port` sets one a test can read).
    fn default() -> PipelineFile {
        let text = std::fs::read_to_string("pipelines/default.toml").unwrap();
        let default_bind = "bind = \"127.0.0.1:9464\"";
        assert!(
            text.contains(default_bind),
            "pipelines/default.toml: no {default_bind}"
        );
        PipelineFile {
            text: text.replace(default_bind, "bind = \"127.0.0.1:0\""),
        }
    }
}

impl PipelineFile {
    /// Any edit of the text.
    pub fn edit(mut self, edit: impl FnOnce(String) -> String) -> PipelineFile {
        self.text = edit(self.text);
        self
    }

    /// Sets `key = value` in `[section]` (`value` as TOML: `"500ms"`, `3`), replacing the line
    /// that sets it or adding one after the section's header.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> PipelineFile {
        let header = format!("[{section}]");
        let mut lines: Vec<String> = self.text.lines().map(str::to_string).collect();
        let start = lines
            .iter()
            .position(|l| l.trim() == header)
            .unwrap_or_else(|| panic!("no {header} in the pipeline file"));
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.starts_with('['))
            .map_or(lines.len(), |i| start + 1 + i);
        let line = format!("{key} = {value}");
        let sets = |l: &String| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        match lines[start + 1..end].iter().position(sets) {
            Some(i) => lines[start + 1 + i] = line,
            None => lines.insert(start + 1, line),
        }
        self.text = lines.join("\n") + "\n";
        self
    }

    /// A `[snapshot]` setting (`trigger_interval`, `trigger_events`, `retention`).
    pub fn snapshot(self, key: &str, value: &str) -> PipelineFile {
        self.set("snapshot", key, value)
    }

    /// `/healthz` and `/metrics` on this loopback port.
    pub fn http_port(self, port: u16) -> PipelineFile {
        self.set("http", "bind", &format!("\"127.0.0.1:{port}\""))
    }

    /// A librdkafka property of the consumer and producer.
    pub fn kafka(self, property: &str, value: &str) -> PipelineFile {
        self.set(
            "source.kafka",
            &format!("\"{property}\""),
            &format!("\"{value}\""),
        )
    }

    /// Every topic (events, dead letters, alerts) prefixed with `tag.`, so that tests sharing
    /// a broker do not share topics.
    pub fn tag_topics(mut self, tag: &str) -> PipelineFile {
        self.text = self.text.replace("= \"spm.", &format!("= \"{tag}.spm."));
        self
    }

    /// Parsed in process, SQL paths resolved as from `pipelines/`.
    pub fn load(&self) -> Arc<Pipeline> {
        Arc::new(
            Pipeline::parse(&self.text, "edited.toml", &|rel| {
                std::fs::read_to_string(format!("pipelines/{rel}")).map_err(|e| e.to_string())
            })
            .unwrap(),
        )
    }

    /// Written to `dir/name.toml` (SQL paths made absolute) for the binary, and loaded from
    /// there as the binary loads it.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, Arc<Pipeline>) {
        let root = std::env::current_dir().unwrap();
        let text = self.text.replace(
            "sql = \"../sql/",
            &format!("sql = \"{}/sql/", root.display()),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let p = Arc::new(Pipeline::load(Some(&path)).unwrap());
        (path, p)
    }
}

/// Options of a `--once` run (the library's defaults). Other runs change it with struct update
/// syntax (`RunOptions { max_events: Some(n), ..once(b, o) }`).
pub fn once(brokers: &str, output: &str) -> RunOptions {
    RunOptions::once(brokers, output)
}

/// Options of a run that goes on until it is stopped.
pub fn continuous(brokers: &str, output: &str) -> RunOptions {
    RunOptions {
        once: false,
        ..once(brokers, output)
    }
}

/// `p`, but serving `/healthz` and `/metrics` on a port of its own when it names the default
/// one: in-process runs must not take it from the demo, whose test binds it at the same time
/// and expects a quiet terminal. A test that reads `/metrics` sets its own port.
fn own_port(p: &Arc<Pipeline>) -> Arc<Pipeline> {
    static DEFAULT: std::sync::LazyLock<Option<std::net::SocketAddr>> =
        std::sync::LazyLock::new(|| Pipeline::builtin().unwrap().http_bind);
    if p.http_bind.is_none() || p.http_bind != *DEFAULT {
        return Arc::clone(p);
    }
    let mut own = (**p).clone();
    own.http_bind = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    Arc::new(own)
}

/// Runs `p` in process to its end (a `--once` or `max_events` run).
pub async fn run_in_process(p: &Arc<Pipeline>, opts: RunOptions) -> RunReport {
    run(own_port(p), opts, std::future::pending())
        .await
        .unwrap()
}

/// A pipeline running in process on a task of its own, until `stop`.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<RunReport>,
}

impl Running {
    pub fn start(p: &Arc<Pipeline>, opts: RunOptions) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let p = own_port(p);
        let task = tokio::spawn(async move {
            run(p, opts, async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        Running { stop, task }
    }

    /// Stops the run as a shutdown signal does (a last snapshot), and waits for its end.
    pub async fn stop(self) -> RunReport {
        self.stop.send(()).unwrap();
        self.task.await.unwrap()
    }
}

/// The `quotaflow` binary cargo built with the tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quotaflow"))
}

/// `quotaflow run --pipeline FILE --brokers B --output O`, to add flags to (`--once`) and spawn.
pub fn run_command(pipeline: &Path, brokers: &str, output: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["run", "--pipeline"])
        .arg(pipeline)
        .args(["--brokers", brokers, "--output", output]);
    c
}

/// `quotaflow run --once` as a process; asserts it succeeds and returns what it printed.
pub fn run_once_process(pipeline: &Path, brokers: &str, output: &str) -> String {
    let out = run_command(pipeline, brokers, output)
        .arg("--once")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The message count of a run's summary line ("read N messages ...").
pub fn messages_read(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"))
}

/// A child process killed if the test fails before it ends (so no pipeline outlives it).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `SIGTERM` (or any other `kill` signal, "-STOP") to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Produces (topic, key, value) messages with the pipeline's producer, in record batches of up
/// to `batch` messages.
pub fn produce(brokers: &str, batch: usize, msgs: &[(String, String, String)]) {
    produce_all(brokers, batch, msgs.to_vec(), |_| {}).unwrap();
}

/// Produces raw payloads, in order, each to its topic and (if given) partition, unkeyed.
pub fn produce_payloads<'a>(
    brokers: &str,
    records: impl IntoIterator<Item = (&'a str, Option<i32>, &'a [u8])>,
) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    for (topic, partition, payload) in records {
        let mut r = BaseRecord::<str, [u8]>::to(topic).payload(payload);
        if let Some(partition) = partition {
            r = r.partition(partition);
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Messages of the default pipeline's topics moved to the same event types' topics of `to`.
pub fn renamed(
    to: &Pipeline,
    msgs: Vec<(String, String, String)>,
) -> Vec<(String, String, String)> {
    let default = Pipeline::builtin().unwrap();
    msgs.into_iter()
        .map(|(t, k, v)| {
            (
                to.source.topics[&default.source.event_type_of(&t).unwrap()].clone(),
                k,
                v,
            )
        })
        .collect()
}

/// `/healthz` and `/metrics` of a running pipeline on a loopback port.
#[derive(Clone)]
pub struct Endpoint {
    base: String,
    client: reqwest::Client,
}

impl Endpoint {
    pub fn on(port: u16) -> Endpoint {
        Endpoint {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// Status code and body of `/healthz`, None while nothing answers.
    pub async fn healthz(&self) -> Option<(u16, serde_json::Value)> {
        let (status, body) = self.get("/healthz").await?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    /// `/healthz` says `ready`: state restored, partitions assigned (src/pipeline.rs).
    pub async fn ready(&self) -> bool {
        self.healthz()
            .await
            .is_some_and(|(_, body)| body["ready"] == true)
    }

    /// `/healthz` answers 200 (ready, broker connected, a fresh snapshot).
    pub async fn healthy(&self) -> bool {
        matches!(self.healthz().await, Some((200, _)))
    }

    /// The text of `/metrics`, None while nothing answers.
    pub async fn metrics(&self) -> Option<String> {
        match self.get("/metrics").await? {
            (200, text) => Some(text),
            _ => None,
        }
    }

    /// Messages the pipeline has counted (`quotaflow_messages_total`, all series).
    pub async fn messages_counted(&self) -> Option<u64> {
        Some(messages_total(&self.metrics().await?))
    }

    /// Whether anything answers at all.
    pub async fn answers(&self) -> bool {
        self.get("/healthz").await.is_some()
    }
}

/// The sum of the `quotaflow_messages_total` series of a `/metrics` text.
pub fn messages_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("quotaflow_messages_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
