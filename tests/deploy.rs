//! The deployment files in `deploy/` against the program they deploy.
//!
//! No Docker engine, Kubernetes cluster or systemd manager runs where these tests run, so the
//! files are checked statically: every YAML file parses; every `SPARKIFY_*` variable they
//! name is a real setting, and each file's set of variables (with the image's own
//! environment underneath, where a container inherits it) loads through the same
//! `Settings::load` as the daemon; ports and probe paths agree with `telemetry.http_addr`;
//! the systemd unit has the directives the operations issue asks for and its sandbox leaves
//! writable every path sparkify writes. `deploy/check.sh` runs `systemd-analyze` on the unit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;
use sparkify::config::{ReplicationStrategy, Settings, Sources, StoreKind};

type Env = BTreeMap<String, String>;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Loads settings from exactly these variables (and `file`), ignoring the process's
/// environment and any `config/default.toml`: what the daemon would see in that deployment.
fn load(env: &Env, file: Option<&Path>, what: &str) -> Settings {
    Settings::load(&Sources {
        file: file.map(Path::to_path_buf),
        env: Some(env.clone()),
        skip_default_file: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{what}: the settings do not load: {e}\n{env:#?}"))
}

fn http_port(settings: &Settings, what: &str) -> u16 {
    let addr: SocketAddr = settings
        .telemetry
        .http_addr
        .parse()
        .unwrap_or_else(|e| panic!("{what}: telemetry.http_addr is not ip:port: {e}"));
    assert!(
        !addr.ip().is_loopback(),
        "{what}: telemetry.http_addr {addr} is loopback; probes from outside the container \
         cannot reach it"
    );
    addr.port()
}

/// Every file under `deploy/` whose name ends with `ext`.
fn files_with_extension(exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("deploy/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, exts, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), exts, &mut out);
    out.sort();
    out
}

/// Every document of a YAML stream, with `<<: *anchor` merges applied (Compose uses them).
fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what} does not parse as YAML: {e}"));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{what}: bad YAML merge: {e}"));
            value
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn get<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    let mut at = value;
    for key in path {
        at = at
            .get(*key)
            .unwrap_or_else(|| panic!("no `{}` in {value:?}", path.join(".")));
    }
    at
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn seq(value: &Value) -> &Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, found {value:?}"))
}

/// A systemd or Compose duration: "45s", "10min", "1m30s", "2h", or bare seconds.
fn duration(text: &str) -> Duration {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match rest[..unit].trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" | "hr" => 3600.0,
            other => panic!("unknown unit {other:?} in duration {text:?}"),
        };
        total += Duration::from_secs_f64(n as f64 * secs);
        rest = &rest[unit..];
    }
    total
}

/// `SPARKIFY_A__B` → `a.b`: the setting an environment variable names.
fn setting_path(var: &str) -> String {
    var.trim_start_matches("SPARKIFY_")
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// Fails unless `var` names a setting that exists (any key under a map-valued setting such
/// as `cassandra.datacenters`). Checks the name alone, whatever the value.
fn assert_real_setting(var: &str, where_: &str) {
    let tree = serde_json::to_value(Settings::default()).expect("settings serialize");
    let path = setting_path(var);
    let mut at = &tree;
    for key in path.split('.') {
        match at {
            serde_json::Value::Object(map) if map.contains_key(key) => at = &map[key],
            // An open map (no fixed keys): the name is the user's, e.g. a datacenter.
            serde_json::Value::Object(map) if map.is_empty() => return,
            _ => panic!("{where_}: {var} is not a setting (no `{path}` in config/default.toml)"),
        }
    }
    assert!(
        !at.is_object() || at.as_object().is_some_and(|m| m.is_empty()),
        "{where_}: {var} names the section `{path}`, not a setting"
    );
}

/// Every `SPARKIFY_...` word in a file, comments included: documentation must not name a
/// setting that does not exist either.
fn mentioned_variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("SPARKIFY_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        if word.len() > "SPARKIFY_".len() {
            found.insert(word.trim_end_matches('_').to_string());
        }
        rest = &tail[end..];
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

/// One instruction of a Dockerfile: the keyword (upper case) and its arguments.
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of the last stage (the runtime image), continuation lines joined.
fn runtime_stage() -> (Vec<Instruction>, usize) {
    let mut all = Vec::new();
    let mut current = String::new();
    for line in read("docker/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                all.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_string(),
                });
                current.clear();
            }
        }
    }
    let stages = all.iter().filter(|i| i.keyword == "FROM").count();
    let last_from = all
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("a FROM");
    (all.split_off(last_from), stages)
}

/// The image's own `ENV` variables: what every container of it starts with.
fn dockerfile_env() -> Env {
    let (stage, _) = runtime_stage();
    let mut env = Env::new();
    for instr in stage.iter().filter(|i| i.keyword == "ENV") {
        for pair in instr.args.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("Dockerfile: use ENV key=value, found {pair:?}"));
            env.insert(key.to_string(), value.trim_matches('"').to_string());
        }
    }
    env
}

fn instruction<'a>(stage: &'a [Instruction], keyword: &str) -> &'a Instruction {
    stage
        .iter()
        .find(|i| i.keyword == keyword)
        .unwrap_or_else(|| panic!("Dockerfile: the runtime stage has no {keyword}"))
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

/// `(section, key, value)` of every setting line of a unit file, in order.
fn unit_entries() -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in read("systemd/sparkify.service").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("sparkify.service: not key=value: {line:?}"));
        out.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    out
}

fn unit_values(key: &str) -> Vec<String> {
    unit_entries()
        .into_iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

fn unit_value(key: &str) -> String {
    let values = unit_values(key);
    values
        .last()
        .unwrap_or_else(|| panic!("sparkify.service: no {key}= in [Service]"))
        .clone()
}

/// `KEY=VALUE` lines of an environment file; with `commented`, also `#KEY=VALUE` lines (the
/// optional blocks a reader is told to uncomment), after the active ones so they win.
fn env_file(text: &str, commented: bool) -> Env {
    let mut active = Env::new();
    let mut optional = Env::new();
    for line in text.lines() {
        let line = line.trim();
        let (target, line) = match line.strip_prefix('#') {
            Some(rest) => (&mut optional, rest.trim_start()),
            None => (&mut active, line),
        };
        if !line.starts_with("SPARKIFY_") {
            continue;
        }
        let (key, value) = line.split_once('=').expect("KEY=VALUE");
        target.insert(key.to_string(), value.trim_matches('"').to_string());
    }
    if commented {
        active.extend(optional);
    }
    active
}

/// The daemon's environment under systemd: the unit's `Environment=` lines, then the
/// EnvironmentFile on top (systemd's order).
fn systemd_env(commented: bool) -> Env {
    let mut env = Env::new();
    for assignment in unit_values("Environment") {
        let (key, value) = assignment.split_once('=').expect("Environment=KEY=VALUE");
        env.insert(key.to_string(), value.to_string());
    }
    env.extend(env_file(&read("systemd/sparkify.env"), commented));
    env
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn sidecar_documents() -> Vec<Value> {
    yaml_documents(&read("kubernetes/sidecar.yaml"), "kubernetes/sidecar.yaml")
}

fn kind_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

/// The Pod spec, whether the file holds a Pod or a workload with a Pod template.
fn pod_spec(docs: &[Value]) -> &Value {
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("Pod") => return get(doc, &["spec"]),
            Some("Deployment" | "StatefulSet" | "DaemonSet") => {
                return get(doc, &["spec", "template", "spec"]);
            }
            _ => {}
        }
    }
    panic!("sidecar.yaml: no Pod, Deployment, StatefulSet or DaemonSet");
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    seq(get(spec, &["containers"]))
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("sidecar.yaml: no container named {name}"))
}

/// The container port a probe names, by number or by port name.
fn probe_port(container: &Value, probe: &str) -> (String, u16) {
    let get_ = get(container, &[probe, "httpGet"]);
    let path = text(get(get_, &["path"]));
    let port = match get(get_, &["port"]) {
        Value::Number(n) => n.as_u64().expect("a port number") as u16,
        Value::String(name) => seq(get(container, &["ports"]))
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .map(|p| text(get(p, &["containerPort"])).parse().expect("a port"))
            .unwrap_or_else(|| panic!("{probe}: no container port named {name}")),
        other => panic!("{probe}: unexpected port {other:?}"),
    };
    (path, port)
}

/// `(mountPath, volume name, read-only)` of a container's mounts.
fn mounts(container: &Value) -> Vec<(PathBuf, String, bool)> {
    seq(get(container, &["volumeMounts"]))
        .iter()
        .map(|m| {
            (
                PathBuf::from(text(get(m, &["mountPath"]))),
                text(get(m, &["name"])),
                m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
            )
        })
        .collect()
}

fn volume<'a>(spec: &'a Value, name: &str) -> &'a Value {
    seq(get(spec, &["volumes"]))
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("sidecar.yaml: no volume named {name}"))
}

/// The writable volume a path lives in, if any (with a read-only root filesystem, nothing
/// else can be written).
fn writable_mount(mounts: &[(PathBuf, String, bool)], path: &Path) -> Option<String> {
    mounts
        .iter()
        .filter(|(at, _, read_only)| !read_only && path.starts_with(at))
        .max_by_key(|(at, _, _)| at.components().count())
        .map(|(_, name, _)| name.clone())
}

/// The sidecar's ConfigMap TOML written to a temporary file, and the `--config` path the
/// container is given for it.
fn sidecar_config_file(docs: &[Value]) -> (tempfile::NamedTempFile, String, PathBuf) {
    let spec = pod_spec(docs);
    let sparkify = container(spec, "sparkify");
    let args: Vec<String> = seq(get(sparkify, &["args"])).iter().map(text).collect();
    let at = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .expect("sparkify container: --config FILE in args");
    let config_path = PathBuf::from(&args[at + 1]);
    assert_eq!(
        args.last().map(String::as_str),
        Some("run"),
        "args end with `run`"
    );

    // Which ConfigMap is mounted where the file is read from, and which key is the file.
    let (mount_dir, volume_name, _) = mounts(sparkify)
        .into_iter()
        .find(|(at, _, _)| config_path.starts_with(at))
        .expect("the --config file is inside a mounted volume");
    let map_name = text(get(volume(spec, &volume_name), &["configMap", "name"]));
    let key = config_path
        .strip_prefix(&mount_dir)
        .expect("prefix")
        .to_str()
        .expect("utf-8")
        .to_string();
    let map = kind_of(docs, "ConfigMap")
        .into_iter()
        .find(|m| text(get(m, &["metadata", "name"])) == map_name)
        .unwrap_or_else(|| panic!("sidecar.yaml: no ConfigMap {map_name}"));
    let toml = text(get(map, &["data", &key]));

    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    fs::write(file.path(), &toml).expect("write temp file");
    (file, toml, config_path)
}

/// The sparkify container's environment: the image's, then the Pod's `env:` on top.
/// `valueFrom` entries get a sample value (what a Secret or field reference would supply).
fn sidecar_env(docs: &[Value]) -> Env {
    let mut env = dockerfile_env();
    let sparkify = container(pod_spec(docs), "sparkify");
    if let Some(list) = sparkify.get("env") {
        for var in seq(list) {
            let name = text(get(var, &["name"]));
            let value = match var.get("value") {
                Some(v) => text(v),
                None => "sample-value-from-reference".to_string(),
            };
            env.insert(name, value);
        }
    }
    env
}

/// Dotted paths of every value set in a TOML document (`cassandra.nodes`, ...).
fn toml_paths(toml: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let value: toml::Value = toml::from_str(toml).expect("the ConfigMap's TOML parses");
    let mut out = BTreeSet::new();
    walk("", &value, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Docker Compose

fn compose() -> Value {
    let mut docs = yaml_documents(&read("docker-compose.yml"), "docker-compose.yml");
    assert_eq!(docs.len(), 1, "docker-compose.yml is one document");
    docs.remove(0)
}

/// A Compose `environment:` as a map, written either as a map or as `KEY=VALUE` items.
fn compose_env(service: &Value) -> Env {
    match get(service, &["environment"]) {
        Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = text(item);
                let (k, v) = item.split_once('=').expect("KEY=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("environment: unexpected {other:?}"),
    }
}

fn healthcheck_command(service: &Value) -> String {
    match get(service, &["healthcheck", "test"]) {
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        other => panic!("healthcheck.test: unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = files_with_extension(&["yml", "yaml"]);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for expected in ["docker-compose.yml", "kubernetes/sidecar.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing deploy/{expected}: {names:?}"
        );
    }
    for file in &files {
        let what = file.display().to_string();
        let docs = yaml_documents(&fs::read_to_string(file).unwrap(), &what);
        assert!(!docs.is_empty(), "{what} holds no YAML document");
        for doc in &docs {
            assert!(
                doc.is_mapping(),
                "{what}: a document is not a mapping: {doc:?}"
            );
        }
    }
}

#[test]
fn every_sparkify_variable_named_in_deploy_is_a_real_setting() {
    let files = files_with_extension(&["yml", "yaml", "env", "service", "sh", "md", "toml"])
        .into_iter()
        .chain([deploy_dir().join("docker/Dockerfile")]);
    let mut seen = 0;
    for file in files {
        let where_ = file
            .strip_prefix(deploy_dir())
            .unwrap()
            .display()
            .to_string();
        for var in mentioned_variables(&fs::read_to_string(&file).unwrap()) {
            assert_real_setting(&var, &where_);
            seen += 1;
        }
    }
    assert!(
        seen > 20,
        "only {seen} SPARKIFY_ variables found under deploy/"
    );
}

#[test]
fn the_image_environment_loads_and_matches_expose_volumes_and_healthcheck() {
    let env = dockerfile_env();
    assert!(
        !env.is_empty(),
        "the runtime stage sets no SPARKIFY_ variables"
    );
    let settings = load(&env, None, "Dockerfile ENV");
    let port = http_port(&settings, "Dockerfile ENV");

    let (stage, stages) = runtime_stage();
    assert!(
        stages >= 2,
        "the Dockerfile is multi-stage (a builder and a runtime)"
    );
    let exposed: Vec<u16> = instruction(&stage, "EXPOSE")
        .args
        .split_whitespace()
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert!(
        exposed.contains(&port),
        "EXPOSE {exposed:?} lacks the HTTP port {port}"
    );
    assert_eq!(instruction(&stage, "STOPSIGNAL").args, "SIGTERM");

    // A numeric, non-root user (Kubernetes' runAsNonRoot can only verify a number).
    let mut args = BTreeMap::new();
    for arg in stage.iter().filter(|i| i.keyword == "ARG") {
        if let Some((k, v)) = arg.args.split_once('=') {
            args.insert(format!("${{{k}}}"), v.to_string());
        }
    }
    let mut user = instruction(&stage, "USER").args.clone();
    for (name, value) in &args {
        user = user.replace(name, value);
    }
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "the image runs as root");

    // Both places sparkify writes are volumes.
    let volumes: Vec<PathBuf> =
        serde_json::from_str::<Vec<String>>(&instruction(&stage, "VOLUME").args)
            .expect("VOLUME as a JSON list")
            .into_iter()
            .map(PathBuf::from)
            .collect();
    let in_volume = |p: &Path| volumes.iter().any(|v| p.starts_with(v));
    assert!(
        volumes.contains(&settings.watch.dir),
        "no VOLUME for {}",
        settings.watch.dir.display()
    );
    assert!(
        in_volume(&settings.embedded.path),
        "the SQLite file is outside every VOLUME"
    );
    assert!(
        in_volume(&settings.rejects.dir),
        "rejects.dir is outside every VOLUME"
    );

    // The health check probes /healthz on the configured port.
    let healthcheck = instruction(&stage, "HEALTHCHECK").args.clone();
    assert!(
        healthcheck.contains("/usr/local/bin/sparkify-healthcheck"),
        "{healthcheck}"
    );
    let copy = stage
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.ends_with("/usr/local/bin/sparkify-healthcheck"))
        .expect("the probe script is copied into the image");
    assert!(copy.args.contains("deploy/docker/healthcheck.sh"));
    let probe = read("docker/healthcheck.sh");
    assert!(
        probe.contains("GET /healthz"),
        "the probe does not request /healthz"
    );
    assert!(
        probe.contains("SPARKIFY_TELEMETRY__HTTP_ADDR"),
        "the probe must read the port from the setting the daemon uses"
    );
}

#[test]
fn compose_runs_three_scylla_nodes_and_a_valid_sparkify_on_them() {
    let compose = compose();
    let services = get(&compose, &["services"]).as_mapping().expect("services");
    let scylla: Vec<(String, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s.get("image")
                .and_then(Value::as_str)
                .is_some_and(|image| image.starts_with("scylladb/scylla"))
        })
        .map(|(name, s)| (text(name), s))
        .collect();
    assert_eq!(scylla.len(), 3, "a three-node ScyllaDB cluster");
    for (name, node) in &scylla {
        let command = text(get(node, &["command"]));
        for flag in ["--seeds", "--smp", "--memory", "--overprovisioned"] {
            assert!(command.contains(flag), "{name}: no {flag} in {command:?}");
        }
        assert!(
            healthcheck_command(node).contains("cqlsh"),
            "{name}: CQL health check"
        );
    }

    let sparkify = get(&compose, &["services", "sparkify"]);
    let own = compose_env(sparkify);
    assert!(own.keys().all(|k| k.starts_with("SPARKIFY_")), "{own:?}");
    // The container sees the image's ENV with the service's environment on top.
    let mut env = dockerfile_env();
    env.extend(own);
    let settings = load(&env, None, "docker-compose.yml sparkify");

    assert_eq!(settings.store.kind, StoreKind::Cassandra);
    assert_eq!(
        settings.cassandra.consistency.to_ascii_uppercase(),
        "LOCAL_QUORUM"
    );
    let replicas = match settings.cassandra.replication_strategy {
        ReplicationStrategy::SimpleStrategy => settings.cassandra.replication_factor,
        ReplicationStrategy::NetworkTopologyStrategy => {
            settings.cassandra.datacenters.values().sum()
        }
    };
    assert_eq!(replicas, 3, "replication factor 3 on a three-node cluster");
    let hosts: BTreeSet<String> = settings
        .cassandra
        .nodes
        .iter()
        .map(|n| n.rsplit_once(':').expect("host:port").0.to_string())
        .collect();
    let names: BTreeSet<String> = scylla.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        hosts, names,
        "every node is a contact point, by service name"
    );

    // The watched folder is the bind-mounted ./event_data.
    let volumes: Vec<String> = seq(get(sparkify, &["volumes"])).iter().map(text).collect();
    let watched = format!("./event_data:{}", settings.watch.dir.display());
    assert!(
        volumes
            .iter()
            .any(|v| v == &watched || v.starts_with(&format!("{watched}:"))),
        "no bind mount {watched} in {volumes:?}"
    );

    // Published port and health check agree with http_addr.
    let port = http_port(&settings, "docker-compose.yml");
    let ports: Vec<String> = seq(get(sparkify, &["ports"])).iter().map(text).collect();
    assert!(
        ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "no published container port {port} in {ports:?}"
    );
    assert!(healthcheck_command(sparkify).contains("sparkify-healthcheck"));

    for name in &names {
        assert_eq!(
            text(get(sparkify, &["depends_on", name, "condition"])),
            "service_healthy",
            "sparkify waits for {name} to be healthy"
        );
    }
    let grace = duration(&text(get(sparkify, &["stop_grace_period"])));
    assert!(
        grace > Duration::from_secs(settings.pipeline.shutdown_timeout_secs),
        "stop_grace_period {grace:?} must exceed pipeline.shutdown_timeout_secs"
    );
}

#[test]
fn the_sidecar_configmap_and_environment_load_as_the_daemon_would() {
    let docs = sidecar_documents();
    let (file, toml, _) = sidecar_config_file(&docs);
    // The TOML alone is a valid configuration file.
    load(
        &Env::new(),
        Some(file.path()),
        "the ConfigMap's sparkify.toml",
    );

    let env = sidecar_env(&docs);
    let settings = load(&env, Some(file.path()), "the sparkify sidecar");
    assert_eq!(settings.store.kind, StoreKind::Cassandra);

    // The environment outranks the file: a key set in both would be silently ignored in the
    // file, and an operator editing the ConfigMap would see no effect.
    let from_env: BTreeSet<String> = env.keys().map(|k| setting_path(k)).collect();
    let shadowed: Vec<String> = toml_paths(&toml)
        .into_iter()
        .filter(|p| from_env.contains(&p.to_ascii_lowercase()))
        .collect();
    assert!(
        shadowed.is_empty(),
        "set in the ConfigMap but overridden by the environment: {shadowed:?}"
    );

    // The password comes from a file in a mounted Secret that has that key.
    let spec = pod_spec(&docs);
    let sparkify = container(spec, "sparkify");
    assert!(
        !env.contains_key("SPARKIFY_CASSANDRA__PASSWORD"),
        "the password must not be an environment value"
    );
    let password_file = PathBuf::from(&settings.cassandra.password_file);
    let (mount_dir, volume_name, read_only) = mounts(sparkify)
        .into_iter()
        .find(|(at, _, _)| password_file.starts_with(at))
        .expect("cassandra.password_file is inside a mounted volume");
    assert!(read_only, "the secret volume is mounted read-only");
    let secret_name = text(get(volume(spec, &volume_name), &["secret", "secretName"]));
    let key = password_file
        .strip_prefix(&mount_dir)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let secret = kind_of(&docs, "Secret")
        .into_iter()
        .find(|s| text(get(s, &["metadata", "name"])) == secret_name)
        .unwrap_or_else(|| panic!("no Secret {secret_name}"));
    let has_key = ["data", "stringData"].iter().any(|field| {
        secret
            .get(*field)
            .and_then(|d| d.get(key.as_str()))
            .is_some()
    });
    assert!(has_key, "Secret {secret_name} has no key {key}");
}

#[test]
fn the_sidecar_probes_ports_volumes_and_security_fit_the_settings() {
    let docs = sidecar_documents();
    let (file, _, _) = sidecar_config_file(&docs);
    let settings = load(
        &sidecar_env(&docs),
        Some(file.path()),
        "the sparkify sidecar",
    );
    let port = http_port(&settings, "the sparkify sidecar");
    let spec = pod_spec(&docs);
    let sparkify = container(spec, "sparkify");

    assert_eq!(
        probe_port(sparkify, "livenessProbe"),
        ("/healthz".to_string(), port)
    );
    assert_eq!(
        probe_port(sparkify, "readinessProbe"),
        ("/readyz".to_string(), port)
    );

    // Producer and sparkify share one emptyDir at the watched folder.
    let sparkify_mounts = mounts(sparkify);
    let shared = writable_mount(&sparkify_mounts, &settings.watch.dir)
        .expect("the watched folder is a writable volume");
    assert!(
        volume(spec, &shared).get("emptyDir").is_some(),
        "the watched folder is an emptyDir"
    );
    let containers = seq(get(spec, &["containers"]));
    let producers: Vec<&Value> = containers
        .iter()
        .filter(|c| text(get(c, &["name"])) != "sparkify")
        .collect();
    assert!(!producers.is_empty(), "a producer container");
    for producer in &producers {
        assert!(
            mounts(producer)
                .iter()
                .any(|(_, name, ro)| name == &shared && !ro),
            "the producer writes into the shared emptyDir"
        );
    }
    // With a read-only root filesystem every path sparkify writes must be a volume.
    assert!(
        writable_mount(&sparkify_mounts, &settings.rejects.dir).is_some(),
        "rejects.dir {} is not in a writable volume",
        settings.rejects.dir.display()
    );

    let pod_non_root = spec
        .get("securityContext")
        .and_then(|s| s.get("runAsNonRoot"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for c in containers {
        let name = text(get(c, &["name"]));
        let sc = get(c, &["securityContext"]);
        let non_root = sc
            .get("runAsNonRoot")
            .and_then(Value::as_bool)
            .unwrap_or(pod_non_root);
        assert!(non_root, "{name}: runAsNonRoot");
        assert_eq!(
            sc.get("readOnlyRootFilesystem").and_then(Value::as_bool),
            Some(true),
            "{name}"
        );
        assert_eq!(
            sc.get("allowPrivilegeEscalation").and_then(Value::as_bool),
            Some(false),
            "{name}"
        );
        let dropped: Vec<String> = seq(get(sc, &["capabilities", "drop"]))
            .iter()
            .map(text)
            .collect();
        assert_eq!(dropped, ["ALL"], "{name}: drop ALL capabilities");
        for bound in ["cpu", "memory"] {
            get(c, &["resources", "limits", bound]);
            get(c, &["resources", "requests", bound]);
        }
    }
    let grace = text(get(spec, &["terminationGracePeriodSeconds"]))
        .parse::<u64>()
        .unwrap();
    assert!(
        grace > settings.pipeline.shutdown_timeout_secs,
        "terminationGracePeriodSeconds {grace} must exceed pipeline.shutdown_timeout_secs"
    );
}

#[test]
fn the_systemd_unit_has_the_required_directives() {
    let one = |key: &str, want: &str| {
        assert_eq!(unit_value(key), want, "sparkify.service: {key}=");
    };
    one("Type", "notify");
    one("ProtectSystem", "strict");
    one("NoNewPrivileges", "yes");
    one("DynamicUser", "yes");
    one("StateDirectory", "sparkify");
    one("KillSignal", "SIGTERM");
    assert!(duration(&unit_value("WatchdogSec")) > Duration::ZERO);
    assert!(
        ["on-failure", "always", "on-abnormal"].contains(&unit_value("Restart").as_str()),
        "a restart policy"
    );
    assert!(
        unit_values("SystemCallFilter")
            .iter()
            .any(|v| v.split_whitespace().any(|g| g == "@system-service")),
        "SystemCallFilter=@system-service"
    );
    let families: BTreeSet<String> = unit_value("RestrictAddressFamilies")
        .split_whitespace()
        .map(String::from)
        .collect();
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.contains(family),
            "RestrictAddressFamilies lacks {family}: sd_notify and TCP"
        );
    }

    let start = unit_value("ExecStart");
    let binary = start.split_whitespace().next().unwrap().to_string();
    assert!(
        start.ends_with(" run"),
        "ExecStart runs the daemon: {start}"
    );
    let pre = unit_value("ExecStartPre");
    assert_eq!(
        pre,
        format!("{binary} config check"),
        "ExecStartPre checks the configuration"
    );

    let settings = load(&systemd_env(false), None, "sparkify.service + sparkify.env");
    let stop = duration(&unit_value("TimeoutStopSec"));
    assert!(
        stop > Duration::from_secs(settings.pipeline.shutdown_timeout_secs),
        "TimeoutStopSec {stop:?} must exceed pipeline.shutdown_timeout_secs"
    );
}

#[test]
fn the_systemd_sandbox_leaves_writable_every_path_sparkify_writes() {
    let writable: Vec<PathBuf> = unit_values("ReadWritePaths")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|p| PathBuf::from(p.trim_start_matches(['-', '+'])))
                .collect::<Vec<_>>()
        })
        .chain([PathBuf::from("/var/lib").join(unit_value("StateDirectory"))])
        .collect();
    assert_eq!(
        unit_value("WorkingDirectory"),
        "/var/lib/sparkify",
        "relative paths land in the state directory"
    );

    // The default (embedded) setup and the Cassandra block a reader may uncomment.
    for (commented, what) in [
        (false, "as shipped"),
        (true, "with the Cassandra block uncommented"),
    ] {
        let settings = load(
            &systemd_env(commented),
            None,
            &format!("sparkify.service + sparkify.env {what}"),
        );
        assert!(
            writable.iter().any(|w| w == &settings.watch.dir),
            "{what}: watch.dir {} is not in ReadWritePaths={writable:?}",
            settings.watch.dir.display()
        );
        for (key, path) in [
            ("embedded.path", &settings.embedded.path),
            ("rejects.dir", &settings.rejects.dir),
            ("watch.done_dir", &settings.watch.done_dir),
        ] {
            // Relative paths resolve in the unit's WorkingDirectory.
            let path = Path::new(&unit_value("WorkingDirectory")).join(path);
            assert!(
                writable.iter().any(|w| path.starts_with(w)),
                "{what}: {key} {} would be read-only under ProtectSystem=strict",
                path.display()
            );
        }
        if commented {
            assert_eq!(settings.store.kind, StoreKind::Cassandra);
            // The password file is the systemd credential the unit documents.
            let credential = "/run/credentials/sparkify.service/cassandra-password";
            assert_eq!(settings.cassandra.password_file, credential);
            assert!(
                read("systemd/sparkify.service").contains("LoadCredential=cassandra-password:"),
                "the unit shows the LoadCredential= line the env file refers to"
            );
        } else {
            assert_eq!(settings.store.kind, StoreKind::Embedded);
        }
    }
}

#[test]
fn durations_parse_like_systemd_and_compose() {
    assert_eq!(duration("45s"), Duration::from_secs(45));
    assert_eq!(duration("10min"), Duration::from_secs(600));
    assert_eq!(duration("1m30s"), Duration::from_secs(90));
    assert_eq!(duration("30"), Duration::from_secs(30));
}
