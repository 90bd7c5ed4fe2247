//! The monitoring files for real: Debian's Prometheus, started here on a loopback port with the
//! shipped `deploy/prometheus/prometheus.yml` (its intervals shortened and its target pointed
//! at the daemon; nothing else changed) and the shipped rules, scrapes the real daemon loading
//! the real sample. Read back through Prometheus' HTTP API: the target is up, the counters
//! are the sample's, every panel of `deploy/grafana/sparkify.json` has data, and a full disk
//! under the embedded store makes `SparkifyStoreDown` pending until space returns.
//!
//! Needs `/usr/bin/prometheus` (Debian's `prometheus` package; `bash deploy/prometheus/check.sh`
//! installs it, and CI runs that before the tests).

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const LONG: Duration = Duration::from_secs(45);
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus server of this test's own, killed when dropped (whatever way the test ends).
struct Prometheus {
    child: Child,
    addr: String,
    /// Its configuration, data and log; handed on to the next try when its port was taken.
    dir: Option<tempfile::TempDir>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped example configuration, made to scrape `target` every second and evaluate the
/// shipped rules every second. Fails if the file no longer has the shape the README shows.
fn scrape_config(target: &str) -> String {
    let path = repo().join("deploy/prometheus/prometheus.yml");
    let mut cfg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["scrape_interval", "evaluation_interval"] {
        assert!(
            cfg["global"][key].is_string(),
            "{} has no global.{key}",
            path.display()
        );
        cfg["global"][key] = "1s".into();
    }
    // Rule files are relative to the configuration; this one is written elsewhere.
    let rules = cfg["rule_files"].as_sequence_mut().expect("rule_files");
    assert_eq!(rules.len(), 1, "{rules:?}");
    for r in rules.iter_mut() {
        let name = r.as_str().unwrap();
        let abs = repo().join("deploy/prometheus").join(name);
        assert!(abs.is_file(), "{} names {name}, not found", path.display());
        *r = abs.to_str().unwrap().into();
    }
    let jobs = cfg["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let mut found = 0;
    for job in jobs.iter_mut() {
        if job["job_name"].as_str() == Some("sparkify") {
            found += 1;
            job["static_configs"][0]["targets"] = vec![target.to_string()].into();
        }
    }
    assert_eq!(
        found,
        1,
        "exactly one job named sparkify in {}",
        path.display()
    );
    serde_yaml::to_string(&cfg).unwrap()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` and waits until it is ready.
    fn start(target: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).is_file(),
            "{PROMETHEUS} is missing: install Debian's prometheus package \
             (`bash deploy/prometheus/check.sh` does)"
        );
        let mut dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(target)).unwrap();
        // A free port now may be taken by the time Prometheus binds it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let log = dir.path().join("prometheus.log");
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("prometheus starts");
            let mut p = Prometheus {
                child,
                addr,
                dir: Some(dir),
            };
            let started = Instant::now();
            while started.elapsed() < LONG {
                if p.child.try_wait().unwrap().is_some() {
                    break;
                }
                if http_get(&p.addr, "/-/ready").0 == 200 {
                    return p;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log = p.log();
            dir = p.dir.take().unwrap();
            drop(p);
            if !last_log.contains("address already in use") {
                break;
            }
        }
        panic!("prometheus did not become ready; its log:\n{last_log}");
    }

    /// `GET path` on the API, as JSON; fails unless Prometheus says `success`.
    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path);
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// The instant vector of a PromQL expression: (labels, value) per series.
    fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap();
                (s["metric"].clone(), v.parse::<f64>().unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The single value of an expression, once it has exactly one series.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Active alerts with this name: their states (`pending`, `firing`).
    fn alert_states(&self, name: &str) -> Vec<String> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap().to_string())
            .collect()
    }

    fn log(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` until it gives `Some`, failing with `what` and Prometheus' log after `LONG`.
fn eventually<T>(p: &Prometheus, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < LONG,
            "timed out after {LONG:?} waiting for {what}; prometheus log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every PromQL expression of the dashboard, with the panel title, Grafana's variables
/// replaced by what Grafana sends for "All" (the variable's own `allValue`).
fn dashboard_queries() -> (Vec<(String, String)>, Vec<String>) {
    let path = repo().join("deploy/grafana/sparkify.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let mut all_values = Vec::new();
    let mut var_queries = Vec::new();
    for v in vars {
        if v["type"] == "query" {
            let name = v["name"].as_str().unwrap();
            let all = v["allValue"]
                .as_str()
                .unwrap_or_else(|| panic!("variable {name} has no allValue"));
            all_values.push((format!("${name}"), all.to_string()));
            var_queries.push(v["query"]["query"].as_str().unwrap().to_string());
        }
    }
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        if p["type"] == "row" || p["type"] == "text" {
            continue;
        }
        let title = p["title"].as_str().unwrap().to_string();
        let targets = p["targets"].as_array();
        assert!(
            targets.is_some_and(|t| !t.is_empty()),
            "panel {title:?} has no query"
        );
        for t in targets.unwrap() {
            let mut expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                .to_string();
            for (var, all) in &all_values {
                expr = expr.replace(var, all);
            }
            assert!(
                !expr.contains('$'),
                "panel {title:?}: unknown variable in {expr}"
            );
            panels.push((title.clone(), expr));
        }
    }
    (panels, var_queries)
}

/// `sparkify run` with its store on a 32 MiB `tmpfs` of its own, watching, and a Prometheus
/// that has scraped it once: the daemon, its endpoint's address, Prometheus.
fn daemon_and_prometheus(sb: &Sandbox) -> (Daemon, String, Prometheus) {
    let (d, addr) = daemon_on_small_disk(sb, 32768, false);
    d.wait_for_message("Watching folder", LONG);
    let p = Prometheus::start(&addr);
    wait_for_first_scrape(&p);
    (d, addr, p)
}

/// Drops every file of the sample into the watched folder, the way producers should.
fn drop_sample(sb: &Sandbox) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(sample_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for f in &names {
        drop_by_rename(
            &sb.join("event_data").join(f.file_name().unwrap()),
            &std::fs::read(f).unwrap(),
        );
    }
    names
}

/// Waits until Prometheus has scraped the idle daemon, so rates see the load from zero.
fn wait_for_first_scrape(p: &Prometheus) {
    eventually(p, "a first scrape of the idle daemon", || {
        (p.value(r#"up{job="sparkify"}"#) == Some(1.0)
            && p.value(r#"sparkify_song_plays_total{job="sparkify"}"#) == Some(0.0))
        .then_some(())
    });
}

/// Waits until Prometheus has scraped the whole sample's counters.
fn wait_for_sample(p: &Prometheus) {
    eventually(p, "sparkify_song_plays_total = 6820 in Prometheus", || {
        (p.value(r#"sparkify_song_plays_total{job="sparkify"}"#) == Some(6820.0)).then_some(())
    });
}

#[test]
fn prometheus_scrapes_the_daemon_and_counts_the_samples_6820_plays_in_every_table() {
    let sb = Sandbox::new();
    let (d, addr, p) = daemon_and_prometheus(&sb);
    drop_sample(&sb);
    wait_for_sample(&p);

    let targets = p.api("/api/v1/targets");
    let active: Vec<&Value> = targets["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["labels"]["job"], "sparkify", "{targets}");
    assert_eq!(active[0]["labels"]["instance"], addr.as_str(), "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(p.value(r#"up{job="sparkify"}"#), Some(1.0));

    let rows = p.query(r#"sparkify_rows_written_total{job="sparkify"}"#);
    let mut tables: Vec<(String, f64)> = rows
        .iter()
        .map(|(m, v)| (m["table"].as_str().unwrap().to_string(), *v))
        .collect();
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        tables,
        vec![
            ("listeners_by_song".to_string(), 6820.0),
            ("song_plays_by_session".to_string(), 6820.0),
            ("song_plays_by_user_session".to_string(), 6820.0),
        ]
    );
    let files = p.query(r#"sparkify_files_total{job="sparkify", outcome="loaded"}"#);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, 30.0);
    assert_eq!(
        p.value(r#"sparkify_rows_read_total{job="sparkify"}"#),
        Some(8056.0)
    );
    assert_eq!(
        p.value(r#"sparkify_rows_skipped_total{job="sparkify"}"#),
        Some(1236.0)
    );
    assert_eq!(
        p.value(r#"sparkify_rows_rejected_total{job="sparkify"}"#),
        Some(0.0)
    );
    assert_eq!(p.value(r#"sparkify_store_up{job="sparkify"}"#), Some(1.0));
    // Nothing is wrong: once the rules have seen the scrapes (SparkifyDaemonAbsent is
    // pending from the first evaluation until the first scrape), no alert is active.
    eventually(&p, "no active alert", || {
        p.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let alerts = p.api("/api/v1/alerts");
        assert_eq!(alerts["alerts"], Value::Array(vec![]), "{alerts}");
    }
    assert_eq!(d.stop(), 0);
}

#[test]
fn every_panel_of_the_grafana_dashboard_returns_data_from_a_live_prometheus() {
    let (panels, var_queries) = dashboard_queries();
    assert!(panels.len() >= 14, "{panels:?}");
    let sb = Sandbox::new();
    let (d, addr, p) = daemon_and_prometheus(&sb);
    drop_sample(&sb);
    wait_for_sample(&p);

    // The daemon picker: label_values(SELECTOR, LABEL) lists this daemon.
    for q in &var_queries {
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q:?} is not label_values(…)"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let values = p.api(&format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(selector.trim())
        ));
        assert_eq!(values, serde_json::json!([addr]), "{q}");
    }

    // Recording rules and 5-minute rates need a few evaluations after the load: wait until
    // every panel has a finite value, then report any that never did.
    let started = Instant::now();
    let empty = loop {
        let empty: Vec<String> = panels
            .iter()
            .filter(|(_, expr)| {
                let got = p.query(expr);
                got.is_empty() || got.iter().any(|(_, v)| !v.is_finite())
            })
            .map(|(title, expr)| format!("{title}: {expr} -> {:?}", p.query(expr)))
            .collect();
        if empty.is_empty() || started.elapsed() > LONG {
            break empty;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // And a few show what they should for this load.
    let by_title = |t: &str| -> Vec<(Value, f64)> {
        let (_, expr) = panels.iter().find(|(title, _)| title == t).unwrap();
        p.query(expr)
    };
    assert_eq!(by_title("Store up")[0].1, 1.0);
    assert_eq!(by_title("Song plays loaded")[0].1, 6820.0);
    assert!(by_title("Song plays / s")[0].1 > 0.0);
    assert_eq!(by_title("Rows written / s by table").len(), 3);
    let since = by_title("Time since last load")[0].1;
    assert!((0.0..LONG.as_secs_f64() * 2.0).contains(&since), "{since}");
    let quantiles: Vec<String> = by_title("Write latency")
        .iter()
        .map(|(m, _)| m["quantile"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(quantiles.len(), 3, "{quantiles:?}");
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_full_disk_under_the_embedded_store_makes_store_down_pending_and_space_back_clears_it() {
    let sb = Sandbox::new();
    let (d, addr, p) = daemon_and_prometheus(&sb);
    // One file loads; then the disk fills and the next file cannot be written. (One file
    // only: SQLite reuses the space of its write-ahead log once a checkpoint has run, which
    // a long load makes likely, and writes into reused space do not fail.)
    let first = "2018-11-05-events.csv";
    let second = "2018-11-06-events.csv";
    drop_by_rename(
        &sb.join("event_data").join(first),
        &std::fs::read(sample_dir().join(first)).unwrap(),
    );
    eventually(&p, "the first file loaded and counted", || {
        let loaded = p.query(r#"sparkify_files_total{job="sparkify", outcome="loaded"}"#);
        (loaded.len() == 1 && loaded[0].1 == 1.0).then_some(())
    });
    assert_eq!(p.value(r#"sparkify_store_up{job="sparkify"}"#), Some(1.0));
    assert!(p.alert_states("SparkifyStoreDown").is_empty());

    let filler = sb.join("store/filler");
    in_namespace_of(
        d.pid(),
        &format!("cat /dev/zero > {} 2>/dev/null || true", filler.display()),
    );
    drop_by_rename(
        &sb.join("event_data").join(second),
        &std::fs::read(sample_dir().join(second)).unwrap(),
    );
    eventually(&p, "sparkify_store_up 0 in Prometheus", || {
        (p.value(r#"sparkify_store_up{job="sparkify"}"#) == Some(0.0)).then_some(())
    });
    let said = format!("{:?}", d.log_lines());
    assert!(said.contains("the disk is full"), "{said}");
    // `for: 5m`: pending first (firing only after five minutes of this).
    let states = eventually(&p, "SparkifyStoreDown pending", || {
        let s = p.alert_states("SparkifyStoreDown");
        (!s.is_empty()).then_some(s)
    });
    assert_eq!(states, vec!["pending".to_string()]);
    let series = p.query(r#"ALERTS{alertname="SparkifyStoreDown"}"#);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0["alertstate"], "pending");
    assert_eq!(series[0].0["instance"], addr.as_str());
    assert_eq!(series[0].0["severity"], "critical");

    // Space returns: the file loads, the store is up, the alert goes away.
    in_namespace_of(d.pid(), &format!("rm {}", filler.display()));
    eventually(&p, "the second file loaded and counted", || {
        let loaded = p.query(r#"sparkify_files_total{job="sparkify", outcome="loaded"}"#);
        (loaded.len() == 1 && loaded[0].1 == 2.0).then_some(())
    });
    eventually(&p, "SparkifyStoreDown cleared", || {
        (p.value(r#"sparkify_store_up{job="sparkify"}"#) == Some(1.0)
            && p.alert_states("SparkifyStoreDown").is_empty())
        .then_some(())
    });
    assert_eq!(d.stop(), 0);
}
