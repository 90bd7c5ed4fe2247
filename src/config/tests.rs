use std::path::PathBuf;

use super::*;

fn load(env: &[(&str, &str)], overrides: &[&str]) -> Result<Settings, ConfigError> {
    Settings::load(&Sources {
        file: None,
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        env: Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        skip_default_file: true,
    })
}

#[test]
fn environment_overrides_nested_keys() {
    let s = load(
        &[
            ("SPARKIFY_EMBEDDED__PATH", "/tmp/x.db"),
            ("SPARKIFY_PIPELINE__READERS", "3"),
            ("SPARKIFY_CASSANDRA__NODES", "a:9042,b:9042"),
            ("SPARKIFY_TRANSFORM__REPAIR_MOJIBAKE", "false"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(s.embedded.path, PathBuf::from("/tmp/x.db"));
    assert_eq!(s.pipeline.readers, 3);
    assert_eq!(s.cassandra.nodes, vec!["a:9042", "b:9042"]);
    assert!(!s.transform.repair_mojibake);
}

#[test]
fn environment_text_stays_text_and_other_names_are_ignored() {
    let s = load(
        &[
            ("SPARKIFY_CASSANDRA__USERNAME", "007"),
            ("SPARKIFY_CASSANDRA__KEYSPACE", "1e5"),
            ("SPARKIFY_CONFIG", "/etc/sparkify/sparkify.toml"),
            ("SPARKIFY_EXTRACT__MAX_RECORD_BYTES", "4096"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(s.cassandra.username, "007");
    assert_eq!(s.cassandra.keyspace, "1e5");
    assert_eq!(s.extract.max_record_bytes, 4096);
}

#[test]
fn set_overrides_win_over_environment() {
    let s = load(
        &[("SPARKIFY_PIPELINE__READERS", "3")],
        &["pipeline.readers=5"],
    )
    .unwrap();
    assert_eq!(s.pipeline.readers, 5);
}

#[test]
fn unknown_key_is_named() {
    let err = load(&[("SPARKIFY_EMBEDDED__PAHT", "x")], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("paht"), "{msg}");
}

#[test]
fn bad_value_names_key_and_form() {
    let err = load(&[("SPARKIFY_PIPELINE__READERS", "many")], &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pipeline.readers"), "{msg}");
    let err = load(&[], &["pipeline.readers=0"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration: `pipeline.readers` is 0; expected an integer from 1 to 64"
    );
    let err = load(&[], &["store.kind=postgres"]).unwrap_err();
    assert!(err.to_string().contains("embedded"), "{err}");
}

#[test]
fn http_addr_takes_ip_or_host_name_with_a_port() {
    for ok in [
        "127.0.0.1:9108",
        "0.0.0.0:0",
        "[::1]:9108",
        "localhost:9108",
        "metrics-0.svc:80",
        "",
    ] {
        let s = load(&[], &[&format!("telemetry.http_addr={ok}")]);
        assert!(s.is_ok(), "{ok}: {:?}", s.err());
    }
    for bad in [
        "localhost",
        "localhost:",
        ":9108",
        "127.0.0.1:99999",
        "a b:9108",
        "host:port",
    ] {
        let err = load(&[], &[&format!("telemetry.http_addr={bad}")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("telemetry.http_addr") && msg.contains("host:port"),
            "{bad}: {msg}"
        );
    }
}

/// Every integer in the settings, by dotted key (`cassandra.datacenters.dc1`).
fn integer_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Integer(_) => out.push(prefix.to_string()),
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                integer_keys(v, &key, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_numeric_setting_has_a_range_that_holds_its_default() {
    let mut s = Settings::default();
    s.cassandra.datacenters.insert("dc1".into(), 3);
    let mut keys = Vec::new();
    integer_keys(&toml::Value::try_from(&s).unwrap(), "", &mut keys);
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| {
            if k.starts_with("cassandra.datacenters.") {
                "cassandra.datacenters".to_string()
            } else {
                k
            }
        })
        .collect();
    let mut bounded: Vec<&str> = BOUNDS.iter().map(|(k, _, _)| *k).collect();
    let mut listed: Vec<&str> = keys.iter().map(String::as_str).collect();
    bounded.sort();
    listed.sort();
    assert_eq!(
        listed, bounded,
        "a numeric setting without a range, or the reverse"
    );
    let numbers: Vec<&str> = s.numbers().iter().map(|(k, _)| *k).collect();
    assert_eq!(numbers.len() + 1, BOUNDS.len(), "numbers() misses a key");
    for (key, value) in s.numbers() {
        let (min, max) = bounds_of(key);
        assert!(min <= value && value <= max, "{key} default {value}");
    }
    assert!(s.validate().is_ok());
}

#[test]
fn values_outside_a_range_name_key_value_and_range() {
    for (key, min, max) in BOUNDS {
        if *key == "cassandra.datacenters" {
            continue;
        }
        let over = format!("{key}={}", max + 1);
        let err = load(&[], &[&over]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "configuration: `{key}` is {}; expected an integer from {min} to {max}",
                max + 1
            )
        );
        if *min > 0 {
            let under = format!("{key}={}", min - 1);
            let err = load(&[], &[&under]).unwrap_err().to_string();
            assert!(err.contains(&format!("from {min} to {max}")), "{err}");
        }
        let at_max = load(&[], &[&format!("{key}={max}")]);
        assert!(at_max.is_ok(), "{key}={max}: {:?}", at_max.err());
    }
    let err = load(&[], &["pipeline.chunk_rows=18446744073709551615"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("18446744073709551615") && err.contains("1 to 65536"),
        "{err}"
    );
    let err = load(
        &[],
        &["pipeline.chunk_rows=65536", "pipeline.chunk_queue=1024"],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at most 4194304"), "{err}");
    let err = load(
        &[],
        &[
            "cassandra.replication_strategy=NetworkTopologyStrategy",
            "cassandra.datacenters.dc1=0",
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dc1 = 0") && err.contains("from 1 to 100"),
        "{err}"
    );
}

#[test]
fn log_level_must_be_a_level_or_a_filter() {
    for ok in [
        "info",
        "WARN",
        "off",
        "warn,sparkify=debug",
        "sparkify::pipeline=trace",
    ] {
        assert!(
            load(&[], &[&format!("telemetry.log_level={ok}")]).is_ok(),
            "{ok}"
        );
    }
    for bad in ["loud", "", "info,loud", "sparkify=loud", "info,,debug"] {
        let err = load(&[], &[&format!("telemetry.log_level={bad}")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`telemetry.log_level`"), "{bad}: {err}");
    }
}

#[test]
fn the_embedded_store_needs_a_file_path() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().display().to_string();
    for bad in [
        "",
        " ",
        ":memory:",
        "file:x.db?mode=memory",
        "data/",
        folder.as_str(),
    ] {
        let err = load(&[], &[&format!("embedded.path={bad}")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`embedded.path`"), "{bad:?}: {err}");
    }
    assert!(load(&[], &[&format!("embedded.path={folder}/plays.db")]).is_ok());
    // A Cassandra configuration does not use the file.
    assert!(load(&[], &["store.kind=cassandra", "embedded.path=:memory:"]).is_ok());
}

#[test]
fn masked_output_hides_password() {
    let mut s = Settings::default();
    s.cassandra.password = "hunter2".into();
    let shown = s.to_masked_toml();
    assert!(!shown.contains("hunter2"));
    assert!(shown.contains("********"));
}
