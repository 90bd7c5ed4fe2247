//! Operating the daemon: the metrics endpoint agrees with the logs and the ledger, readiness
//! follows the store, logs are JSON an aggregator can parse, secrets stay out of sight.

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use util::http_get as get;
use util::*;

const LONG: Duration = Duration::from_secs(60);

/// Sample values of a Prometheus text page, keyed by `name{labels}`.
fn parse_metrics(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_agree_with_the_logs_and_the_ledger() {
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    // One file with a rejected row, one that fails, one duplicate of a sample file.
    let header = "artist,auth,firstName,gender,itemInSession,lastName,length,level,location,method,page,registration,sessionId,song,status,ts,userId";
    std::fs::write(
        sb.join("event_data/rejects.csv"),
        format!("{header}\nA,Logged In,Ann,F,0,Lee,1.5,free,X,PUT,NextSong,1,900001,S,200,1,7\nA,Logged In,Ann,F,1,Lee,oops,free,X,PUT,NextSong,1,900001,S,200,1,7\n"),
    )
    .unwrap();
    std::fs::write(
        sb.join("event_data/broken.csv"),
        "no,useful,columns\n1,2,3\n",
    )
    .unwrap();
    std::fs::copy(
        sample_dir().join("2018-11-03-events.csv"),
        sb.join("event_data/zz-copy.csv"),
    )
    .unwrap();
    let d = Daemon::start(&sb, &[("SPARKIFY_TELEMETRY__HTTP_ADDR", "127.0.0.1:0")]);
    let addr = d.http_addr();
    wait_until("every file finished", LONG, || {
        d.messages("Loaded file").len()
            + d.messages("File failed").len()
            + d.messages("Skipped file: same content already loaded")
                .len()
            == 33
    });
    let (code, page) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    let m = parse_metrics(&page);

    // What the run printed, file by file.
    let loaded = d.messages("Loaded file");
    let sum = |field: &str| -> f64 { loaded.iter().map(|l| l[field].as_f64().unwrap()).sum() };
    // What the ledger recorded.
    let conn = rusqlite::Connection::open(sb.db()).unwrap();
    let ledger =
        |sql: &str| -> f64 { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as f64 };

    assert_eq!(m["sparkify_files_discovered_total"], 33.0);
    assert_eq!(
        m["sparkify_files_total{outcome=\"loaded\"}"],
        loaded.len() as f64
    );
    assert_eq!(
        m["sparkify_files_total{outcome=\"loaded\"}"],
        ledger("SELECT count(*) FROM ingest_ledger WHERE status = 'loaded'")
    );
    assert_eq!(m["sparkify_files_total{outcome=\"loaded\"}"], 31.0);
    assert_eq!(m["sparkify_files_total{outcome=\"failed\"}"], 1.0);
    assert_eq!(
        m["sparkify_files_total{outcome=\"failed\"}"],
        ledger("SELECT count(*) FROM ingest_ledger WHERE status = 'failed'")
    );
    assert_eq!(m["sparkify_files_total{outcome=\"duplicate\"}"], 1.0);
    assert_eq!(m["sparkify_rows_read_total"], sum("rows"));
    assert_eq!(
        m["sparkify_rows_read_total"],
        ledger("SELECT sum(rows_read) FROM ingest_ledger")
    );
    assert_eq!(m["sparkify_song_plays_total"], sum("song_plays"));
    assert_eq!(
        m["sparkify_song_plays_total"],
        ledger("SELECT sum(song_plays) FROM ingest_ledger")
    );
    assert_eq!(m["sparkify_song_plays_total"], 6821.0);
    assert_eq!(m["sparkify_rows_skipped_total"], sum("skipped"));
    assert_eq!(
        m["sparkify_rows_skipped_total"],
        ledger("SELECT sum(skipped) FROM ingest_ledger")
    );
    assert_eq!(m["sparkify_rows_rejected_total"], 1.0);
    assert_eq!(
        m["sparkify_rows_rejected_total"],
        ledger("SELECT sum(rejected) FROM ingest_ledger")
    );
    assert_eq!(m["sparkify_values_repaired_total"], sum("repaired"));
    assert_eq!(m["sparkify_values_repaired_total"], 346.0);
    for table in [
        "song_plays_by_session",
        "song_plays_by_user_session",
        "listeners_by_song",
    ] {
        assert_eq!(
            m[&format!("sparkify_rows_written_total{{table=\"{table}\"}}")],
            6821.0,
            "{table}"
        );
    }
    assert!(m["sparkify_write_duration_seconds_count"] >= 1.0);
    assert!(m["sparkify_store_requests_total"] >= 1.0);
    assert_eq!(m["sparkify_store_up"], 1.0);
    assert_eq!(m["sparkify_queue_depth{queue=\"chunks\"}"], 0.0);
    assert_eq!(m["sparkify_queue_depth{queue=\"files\"}"], 0.0);
    assert!(m["sparkify_last_load_timestamp_seconds"] > 1.7e9);
    assert!(page.contains("# HELP sparkify_files_total"));
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(d.stop(), 0);
}

#[test]
fn readiness_follows_the_store() {
    let sb = Sandbox::new();
    // A host name is looked up when the endpoint is bound.
    let d = Daemon::start(&sb, &[("SPARKIFY_TELEMETRY__HTTP_ADDR", "localhost:0")]);
    let addr = d.http_addr();
    d.wait_for_message("Watching folder", LONG);
    wait_until("ready", LONG, || get(&addr, "/readyz").0 == 200);

    // The database file goes away (a volume unmounted, an operator's mistake).
    std::fs::rename(sb.db(), sb.join("elsewhere.db")).unwrap();
    wait_until("not ready", LONG, || get(&addr, "/readyz").0 == 503);
    let (_, body) = get(&addr, "/readyz");
    assert!(body.contains("store unreachable"), "{body}");
    assert!(
        body.contains("sparkify.db was removed or replaced"),
        "{body}"
    );
    let m = parse_metrics(&get(&addr, "/metrics").1);
    assert_eq!(m["sparkify_store_up"], 0.0);
    assert_eq!(get(&addr, "/healthz").0, 200, "alive all the same");

    // It comes back.
    std::fs::rename(sb.join("elsewhere.db"), sb.db()).unwrap();
    wait_until("ready again", LONG, || get(&addr, "/readyz").0 == 200);
    assert!(
        !d.messages("Store unreachable; loads pause until it returns")
            .is_empty()
    );
    assert!(!d.messages("Store reachable again").is_empty());
    assert_eq!(d.stop(), 0);
}

#[test]
fn json_logs_parse_and_carry_file_and_counts() {
    // At debug level too, so the per-row lines are checked as well.
    let sb = Sandbox::new();
    sb.copy_dir(&sample_dir(), "event_data");
    let d = Daemon::start(&sb, &[("SPARKIFY_TELEMETRY__LOG_LEVEL", "debug")]);
    wait_until("30 files", LONG, || ledger_count(&sb.db(), "loaded") == 30);
    let lines = d.log_lines();
    assert_eq!(d.stop(), 0);
    assert!(lines.len() >= 30);
    for l in &lines {
        assert!(l.get("unparsed").is_none(), "not JSON: {l}");
        assert!(
            l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(),
            "{l}"
        );
    }
    let loaded: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "Loaded file")
        .collect();
    assert_eq!(loaded.len(), 30);
    let first = loaded
        .iter()
        .find(|l| {
            l["file"]
                .as_str()
                .unwrap()
                .ends_with("2018-11-01-events.csv")
        })
        .unwrap();
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["rows"], 15);
    assert_eq!(first["song_plays"], 11);
    assert_eq!(first["skipped"], 4);
    assert_eq!(first["rejected"], 0);
    // Nothing per row at INFO.
    let info = lines.iter().filter(|l| l["level"] == "INFO").count();
    assert!(info < 80, "{info} INFO lines for 30 files");
}

#[test]
fn secrets_stay_out_of_output() {
    let sb = Sandbox::new();
    let out = sb
        .cmd(&["config", "show"])
        .env("SPARKIFY_CASSANDRA__PASSWORD", "hunter2-secret")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let shown = stdout(&out);
    assert!(!shown.contains("hunter2-secret"));
    assert!(shown.contains("password = \"********\""));
    let help = sb
        .cmd(&["--help"])
        .env("SPARKIFY_CASSANDRA__PASSWORD", "hunter2-secret")
        .output()
        .unwrap();
    assert!(!stdout(&help).contains("hunter2-secret"));
    // An unreachable cluster: the error names the problem, never the password.
    let out = sb
        .cmd(&["status"])
        .env("SPARKIFY_STORE__KIND", "cassandra")
        .env("SPARKIFY_CASSANDRA__NODES", "127.0.0.1:1")
        .env("SPARKIFY_CASSANDRA__USERNAME", "loader")
        .env("SPARKIFY_CASSANDRA__PASSWORD", "hunter2-secret")
        .env("SPARKIFY_CASSANDRA__CONNECT_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2-secret"));
    assert!(
        stderr(&out).contains("cannot open the store"),
        "{}",
        stderr(&out)
    );
}
