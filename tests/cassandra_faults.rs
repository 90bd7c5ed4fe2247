//! The Cassandra store under faults: `scylla-proxy` sits between the real `sparkify` binary
//! (real `scylla` driver) and the in-process CQL emulator, and by rule answers writes with
//! errors, drops connections, or lets nothing through for a while. It also plays a password-
//! checking server, which the emulator cannot.
//!
//! Every scenario ends with every row of the sample present, every file ledgered once, and —
//! checked while the load runs, by reading the emulator directly — no file ledgered before all
//! of its rows were in the tables.

#[path = "common/cql.rs"]
mod cql;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cql::{Emulator, Sandbox, assert_same, reference, sample_dir, text};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla_proxy::{
    Condition, Node, Proxy, Reaction, RequestFrame, RequestOpcode, RequestReaction, RequestRule,
    ResponseFrame, ResponseOpcode, RunningProxy, ShardAwareness,
};
use sparkify::extract::SongPlay;
use sparkify::store::dump_line;
use tokio::sync::mpsc;

/// A free port on 127.0.0.1 for the proxy to listen on.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A proxy in front of `server` with these request rules.
async fn proxy(server: SocketAddr, rules: Vec<RequestRule>) -> (RunningProxy, SocketAddr) {
    let addr = free_addr();
    let proxy = Proxy::builder()
        .with_node(
            Node::builder()
                .real_address(server)
                .proxy_address(addr)
                .shard_awareness(ShardAwareness::Unaware)
                .request_rules(rules)
                .build(),
        )
        .build();
    (proxy.run().await.expect("proxy starts"), addr)
}

/// Frames on the driver's request connections, not its control connection (whose loss
/// would only test the driver's metadata refresh).
fn on_request_connections() -> Condition {
    Condition::not(Condition::ConnectionRegisteredAnyEvent)
}

/// Writes (and ledger reads and writes, which are the same opcodes).
fn writes() -> Condition {
    on_request_connections().and(
        Condition::RequestOpcode(RequestOpcode::Execute)
            .or(Condition::RequestOpcode(RequestOpcode::Batch)),
    )
}

/// A frame a rule acted on, as the proxy reports it.
type Seen = (RequestFrame, Option<u16>);

/// Counts frames a rule acted on.
fn counter() -> (mpsc::UnboundedSender<Seen>, mpsc::UnboundedReceiver<Seen>) {
    mpsc::unbounded_channel()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// Reads the emulator directly (not through the proxy) to check that every file in the ledger
/// has all of its rows in all three tables.
struct Verifier {
    session: Session,
    files: BTreeMap<String, Vec<SongPlay>>,
    verified: BTreeSet<String>,
    ledger: PreparedStatement,
    partitions: [PreparedStatement; 3],
}

impl Verifier {
    async fn new(emulator: &Emulator) -> Verifier {
        let session = emulator.session().await;
        // Creates the keyspace and tables, so the statements below can be prepared.
        drop(cql::open_store(emulator.addr).await);
        let prepare = |cql: &'static str| {
            let session = &session;
            async move { session.prepare(cql).await.expect(cql) }
        };
        Verifier {
            files: cql::plays_by_file(),
            verified: BTreeSet::new(),
            ledger: prepare("SELECT path, status FROM sparkify.ingest_ledger").await,
            partitions: [
                prepare(
                    "SELECT sessionid, iteminsession, artist, song, length \
                     FROM sparkify.song_plays_by_session WHERE sessionid = ?",
                )
                .await,
                prepare(
                    "SELECT userid, sessionid, iteminsession, artist, song, firstname, lastname \
                     FROM sparkify.song_plays_by_user_session WHERE userid = ? AND sessionid = ?",
                )
                .await,
                prepare(
                    "SELECT song, userid, firstname, lastname \
                     FROM sparkify.listeners_by_song WHERE song = ?",
                )
                .await,
            ],
            session,
        }
    }

    /// Checks files ledgered since the last call; returns how many loaded entries there are.
    /// Panics if a loaded file misses a row, or if a file has two entries.
    async fn check(&mut self) -> usize {
        let entries: Vec<(String, String)> = self
            .session
            .execute_iter(self.ledger.clone(), ())
            .await
            .unwrap()
            .rows_stream()
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut names = BTreeSet::new();
        for (path, status) in &entries {
            assert_eq!(status, "loaded", "{path}");
            let name = path.rsplit('/').next().unwrap().to_string();
            assert!(names.insert(name.clone()), "{name} ledgered twice");
            if !self.verified.contains(&name) {
                self.verify_file(&name).await;
                self.verified.insert(name);
            }
        }
        entries.len()
    }

    async fn verify_file(&self, name: &str) {
        let plays = &self.files[name];
        let mut expected: [BTreeSet<String>; 3] = Default::default();
        let mut sessions = BTreeSet::new();
        let mut user_sessions = BTreeSet::new();
        let mut songs = BTreeSet::new();
        for p in plays {
            let r = p.session_row();
            expected[0].insert(dump_line(&[
                &r.sessionid,
                &r.iteminsession,
                &r.artist,
                &r.song,
                &r.length,
            ]));
            let r = p.user_session_row();
            expected[1].insert(dump_line(&[
                &r.userid,
                &r.sessionid,
                &r.iteminsession,
                &r.artist,
                &r.song,
                &r.firstname,
                &r.lastname,
            ]));
            let r = p.listener_row();
            expected[2].insert(dump_line(&[&r.song, &r.userid, &r.firstname, &r.lastname]));
            sessions.insert(p.session_id);
            user_sessions.insert((p.user_id, p.session_id));
            songs.insert(p.song.clone());
        }
        let mut found: [BTreeSet<String>; 3] = Default::default();
        let read = |i: usize, values: Vec<scylla::value::CqlValue>| {
            let statement = self.partitions[i].clone();
            async move {
                let rows: Vec<scylla::value::Row> = self
                    .session
                    .execute_iter(statement, values)
                    .await
                    .unwrap()
                    .rows_stream()
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                (i, rows)
            }
        };
        use scylla::value::CqlValue as V;
        let mut reads = Vec::new();
        for s in sessions {
            reads.push(read(0, vec![V::Int(s)]));
        }
        for (u, s) in user_sessions {
            reads.push(read(1, vec![V::Int(u), V::Int(s)]));
        }
        for s in songs {
            reads.push(read(2, vec![V::Text(s)]));
        }
        let mut results = futures::stream::iter(reads).buffer_unordered(32);
        while let Some((i, rows)) = results.next().await {
            for row in rows {
                let cells: Vec<String> = row
                    .columns
                    .iter()
                    .map(|c| match c {
                        Some(V::Int(v)) => v.to_string(),
                        Some(V::Double(v)) => v.to_string(),
                        Some(V::Text(v)) => v.clone(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                let shown: Vec<&dyn std::fmt::Display> =
                    cells.iter().map(|c| c as &dyn std::fmt::Display).collect();
                found[i].insert(dump_line(&shown));
            }
        }
        for i in 0..3 {
            let missing: Vec<&String> = expected[i].difference(&found[i]).take(3).collect();
            assert!(
                missing.is_empty(),
                "{name} is ledgered as loaded but {} of its rows are not in {}: {missing:?}",
                expected[i].difference(&found[i]).count(),
                sparkify::store::TABLES[i]
            );
        }
    }
}

/// Runs the command, checking the ledger invariant every few hundred milliseconds while it
/// runs, and `on_tick` (with the time since start) at the same pace.
async fn run_checking(
    mut cmd: tokio::process::Command,
    verifier: &mut Verifier,
    mut on_tick: impl FnMut(Duration),
) -> (Output, usize) {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("sparkify starts");
    let started = Instant::now();
    let output = child.wait_with_output();
    tokio::pin!(output);
    let mut checks = 0;
    let output = loop {
        tokio::select! {
            out = &mut output => break out.expect("sparkify output"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                verifier.check().await;
                checks += 1;
                on_tick(started.elapsed());
                assert!(started.elapsed() < Duration::from_secs(120), "sparkify did not finish");
            }
        }
    };
    (output, checks)
}

/// Sums `requests=` and `retries=` of the writers' debug lines.
fn requests_and_retries(out: &Output) -> (u64, u64) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut requests, mut retries) = (0, 0);
    for line in stderr
        .lines()
        .filter(|l| l.contains("Wrote a group of plays"))
    {
        let field = |name: &str| -> u64 {
            let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        requests += field("requests");
        retries += field("retries");
    }
    (requests, retries)
}

fn ingest_args(sample: &str) -> Vec<&str> {
    vec![
        "ingest",
        "--set",
        "telemetry.log_level=warn,sparkify::pipeline=debug",
        sample,
    ]
}

/// The end of every scenario: the command succeeded with all 30 files loaded, each once, and
/// the tables hold exactly what the embedded store holds.
async fn assert_complete(out: &Output, verifier: &mut Verifier, emulator: Emulator) {
    assert!(out.status.success(), "{}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("30 loaded, 0 failed"),
        "{}",
        text(out)
    );
    assert_eq!(verifier.check().await, 30);
    assert_eq!(verifier.verified.len(), 30);
    assert_same(&emulator.stop(), &reference().dump);
}

/// (a) About one write in ten is answered Overloaded or WriteTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_and_write_timeout_answers_are_retried() {
    let emulator = Emulator::start();
    let mut verifier = Verifier::new(&emulator).await;
    let (overloaded_tx, mut overloaded) = counter();
    let (timeout_tx, mut timeouts) = counter();
    // Random (the proxy cannot be seeded), so the figure varies from run to run; the caps keep
    // the total bounded. Whatever the pattern, the end state must be the same.
    let rules = vec![
        RequestRule(
            writes()
                .and(Condition::RandomWithProbability(0.05))
                .and(Condition::TrueForLimitedTimes(800)),
            RequestReaction::forge()
                .overloaded()
                .with_feedback_when_performed(overloaded_tx),
        ),
        RequestRule(
            writes()
                .and(Condition::RandomWithProbability(0.05))
                .and(Condition::TrueForLimitedTimes(800)),
            RequestReaction::forge()
                .write_timeout()
                .with_feedback_when_performed(timeout_tx),
        ),
    ];
    let (running, addr) = proxy(emulator.addr, rules).await;
    let sandbox = Sandbox::cassandra(addr, "");
    let sample = sample_dir();
    let started = Instant::now();
    let (out, checks) = run_checking(
        sandbox.tokio_cmd(&ingest_args(sample.to_str().unwrap())),
        &mut verifier,
        |_| {},
    )
    .await;
    let (requests, retries) = requests_and_retries(&out);
    let (o, t) = (drain(&mut overloaded), drain(&mut timeouts));
    eprintln!(
        "faults injected: {o} Overloaded, {t} WriteTimeout; the writers saw {requests} requests, \
         {retries} retries; {checks} ledger checks; {:?}",
        started.elapsed()
    );
    assert!(o > 50 && t > 50, "{o} {t}: {}", text(&out));
    assert!(retries > 0);
    let _ = running.finish().await;
    assert_complete(&out, &mut verifier, emulator).await;
}

/// (b) The connection is dropped three times while files are being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_mid_file_lose_nothing() {
    let emulator = Emulator::start();
    let mut verifier = Verifier::new(&emulator).await;
    let (drops_tx, mut drops) = counter();
    // Each rule lets `after` writes through, then drops the connection once.
    let drop_after = |after: usize| {
        RequestRule(
            writes()
                .and(Condition::not(Condition::TrueForLimitedTimes(after)))
                .and(Condition::TrueForLimitedTimes(1)),
            RequestReaction::drop_connection().with_feedback_when_performed(drops_tx.clone()),
        )
    };
    let rules = vec![drop_after(400), drop_after(2500), drop_after(5000)];
    let (running, addr) = proxy(emulator.addr, rules).await;
    let sandbox = Sandbox::cassandra(addr, "");
    let sample = sample_dir();
    let started = Instant::now();
    let (out, checks) = run_checking(
        sandbox.tokio_cmd(&ingest_args(sample.to_str().unwrap())),
        &mut verifier,
        |_| {},
    )
    .await;
    let (requests, retries) = requests_and_retries(&out);
    let dropped = drain(&mut drops);
    eprintln!(
        "connections dropped: {dropped}; the writers saw {requests} requests, {retries} retries; \
         {checks} ledger checks; {:?}",
        started.elapsed()
    );
    assert!(dropped >= 2, "{dropped}: {}", text(&out));
    assert!(retries > 0);
    let _ = running.finish().await;
    assert_complete(&out, &mut verifier, emulator).await;
}

/// (c) The cluster is unreachable when the daemon starts, and again for four seconds mid-run:
/// every connection, the control connection too, is dropped as soon as it sends anything. The
/// daemon waits both times, resumes by itself, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_outages() {
    let emulator = Emulator::start();
    let mut verifier = Verifier::new(&emulator).await;
    let nothing_gets_through = || {
        Some(vec![RequestRule(
            Condition::True,
            RequestReaction::drop_connection(),
        )])
    };
    let (mut running, addr) = proxy(emulator.addr, vec![]).await;
    running.running_nodes[0].change_request_rules(nothing_gets_through());
    let sandbox = Sandbox::cassandra(addr, "");
    let watched = sandbox.path().join("in");
    std::fs::create_dir(&watched).unwrap();
    for entry in std::fs::read_dir(sample_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, watched.join(path.file_name().unwrap())).unwrap();
    }
    let http = free_addr();
    let mut cmd =
        sandbox.tokio_cmd(&["run", "--set", &format!("telemetry.http_addr={http}"), "in"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("daemon starts");
    let pid = child.id().expect("pid");
    let started = Instant::now();

    // Phases: unreachable at start, reachable, unreachable mid-run, reachable to the end.
    let (seen_tx, mut seen) = counter();
    let mut phase = 0;
    let mut writes_seen = 0;
    let mut outage_at = None;
    let mut outage_end = None;
    let mut ledgered_before = 0;
    let mut writes_before = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writes_seen += drain(&mut seen);
        let let_through = || {
            Some(vec![RequestRule(
                writes(),
                RequestReaction::noop().with_feedback_when_performed(seen_tx.clone()),
            )])
        };
        match phase {
            0 if started.elapsed() >= Duration::from_millis(2500) => {
                running.running_nodes[0].change_request_rules(let_through());
                phase = 1;
            }
            1 if writes_seen >= 1500 => {
                ledgered_before = verifier.check().await;
                writes_before = writes_seen;
                running.running_nodes[0].change_request_rules(nothing_gets_through());
                outage_at = Some(Instant::now());
                phase = 2;
            }
            2 if outage_at.unwrap().elapsed() >= Duration::from_secs(4) => {
                running.running_nodes[0].change_request_rules(let_through());
                outage_end = Some(Instant::now());
                phase = 3;
            }
            _ => {}
        }
        let ledgered = verifier.check().await;
        if phase < 2 {
            assert!(ledgered < 30, "the outage came too late to test anything");
        }
        if phase == 3 && ledgered == 30 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the daemon did not load everything: {ledgered} files ledgered, phase {phase}"
        );
    }
    let (at, end) = (outage_at.unwrap(), outage_end.unwrap());
    eprintln!(
        "start-up outage 2.5 s; mid-run outage after {writes_before} writes ({ledgered_before} \
         files ledgered) for {:?}; all 30 files ledgered {:?} after it ended; {:?} in all",
        end - at,
        end.elapsed(),
        started.elapsed()
    );
    // The store's metrics, as Prometheus scrapes them.
    let metrics = {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(http).expect("metrics endpoint");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        conn.read_to_string(&mut page).unwrap();
        page
    };
    for expected in [
        "sparkify_store_requests_total ",
        "sparkify_store_retries_total{cause=\"connection\"}",
        "sparkify_store_requests_in_flight 0",
    ] {
        assert!(metrics.contains(expected), "no {expected:?} in {metrics}");
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the daemon stops on SIGTERM")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Store unreachable; retrying"),
        "the start-up outage left no trace in the log: {}",
        text(&out)
    );
    assert!(
        stderr.contains("Store request failed; retrying with backoff"),
        "the mid-run outage left no trace in the log: {}",
        text(&out)
    );
    let _ = running.finish().await;
    assert_eq!(verifier.check().await, 30);
    assert_same(&emulator.stop(), &reference().dump);
}

/// A server that asks for a password: the proxy answers STARTUP with AUTHENTICATE and checks
/// the SASL PLAIN token of AUTH_RESPONSE itself, so the driver's real handshake runs.
fn password_server(user: &'static str, password: &'static str) -> Vec<RequestRule> {
    let authenticate = Arc::new(|request: RequestFrame| {
        let class = b"org.apache.cassandra.auth.PasswordAuthenticator";
        let mut body = (class.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(class);
        ResponseFrame::new(
            request.params.for_response(),
            ResponseOpcode::Authenticate,
            body.into(),
        )
    });
    let check = Arc::new(move |request: RequestFrame| {
        let mut expected = vec![0u8];
        expected.extend_from_slice(user.as_bytes());
        expected.push(0);
        expected.extend_from_slice(password.as_bytes());
        let token = request.body.get(4..).unwrap_or_default();
        if token == expected.as_slice() {
            // A null token.
            ResponseFrame::new(
                request.params.for_response(),
                ResponseOpcode::AuthSuccess,
                (-1i32).to_be_bytes().to_vec().into(),
            )
        } else {
            ResponseFrame::forged_error(
                request.params,
                scylla_proxy::example_db_errors::authentication_error(),
                Some("Provided username and/or password are incorrect"),
            )
            .unwrap()
        }
    });
    vec![
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::Startup),
            RequestReaction::forge_response(authenticate),
        ),
        RequestRule(
            Condition::RequestOpcode(RequestOpcode::AuthResponse),
            RequestReaction::forge_response(check),
        ),
    ]
}

/// Wrong password: a clear authentication error, exit 3, and the password nowhere in the
/// output; the daemon gives up at once instead of retrying. The right one (from a file) loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_never_shown() {
    let emulator = Emulator::start();
    let (running, addr) = proxy(emulator.addr, password_server("sparky", "right-horse")).await;

    let sandbox = Sandbox::cassandra(
        addr,
        "username = \"sparky\"\npassword = \"wrong-battery-staple\"",
    );
    let out = sandbox.tokio_cmd(&["status"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("authentication failed"), "{all}");
    assert!(all.contains("cassandra.password"), "{all}");
    assert!(!all.contains("wrong-battery-staple"), "{all}");
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        sandbox.tokio_cmd(&["run", "in"]).output(),
    )
    .await
    .expect("the daemon does not retry bad credentials")
    .unwrap();
    assert_eq!(run.status.code(), Some(3), "{}", text(&run));
    assert!(!text(&run).contains("wrong-battery-staple"));
    let shown = sandbox
        .tokio_cmd(&["config", "show"])
        .output()
        .await
        .unwrap();
    assert!(!text(&shown).contains("wrong-battery-staple"));

    let sandbox = Sandbox::cassandra(
        addr,
        "username = \"sparky\"\npassword_file = \"password.txt\"",
    );
    std::fs::write(sandbox.path().join("password.txt"), "right-horse\n").unwrap();
    let some_files = sandbox.path().join("in");
    std::fs::create_dir(&some_files).unwrap();
    std::fs::copy(
        sample_dir().join("2018-11-11-events.csv"),
        some_files.join("2018-11-11-events.csv"),
    )
    .unwrap();
    let out = sandbox.tokio_cmd(&["ingest", "in"]).output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 loaded"));
    let _ = running.finish().await;
}
