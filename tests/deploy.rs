//! The deployment files in `deploy/` against the program they deploy.
//!
//! Statically, in every `cargo test`: every YAML file parses; every `SPARKIFY_*` variable they
//! name is a real setting, and each file's set of variables (with the image's own
//! environment underneath, where a container inherits it) loads through the same
//! `Settings::load` as the daemon; ports and probe paths agree with `telemetry.http_addr`;
//! the systemd unit has the directives the operations issue asks for and its sandbox leaves
//! writable every path sparkify writes; the Dockerfile needs no registry. `deploy/check.sh`
//! runs `systemd-analyze` on the unit.
//!
//! Live, with `bash deploy/test/run.sh` (root; it installs Docker, debootstrap and cargo-deb
//! when missing; see the "Live" section below and deploy/README.md): the image is
//! built and run as the README shows, the Kubernetes Pod is emulated from the manifest's own
//! values, and the Debian package is installed on a machine booting systemd.

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
    assert_eq!(
        binary, "/usr/bin/sparkify",
        "the path the Debian package installs"
    );
    // A bad setting makes `run` exit 2 before it opens anything; that must not be retried.
    // An ExecStartPre check would be: systemd restarts a unit whose ExecStartPre fails
    // whatever RestartPreventExitStatus= says (measured under systemd 252, and checked live by
    // under_systemd_a_bad_setting_fails_the_start_once_with_the_reason_and_no_restart_loop).
    assert!(
        unit_values("RestartPreventExitStatus")
            .iter()
            .any(|v| v.split_whitespace().any(|s| s == "2")),
        "RestartPreventExitStatus=2: a bad configuration is not retried"
    );
    assert!(
        unit_values("ExecStartPre").is_empty(),
        "ExecStartPre= would restart-loop on a bad configuration: {:?}",
        unit_values("ExecStartPre")
    );
    // Many readers, the database and one socket per Cassandra connection: more than the
    // default soft limit of 1024 open files.
    let nofile: u64 = unit_value("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}");

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

#[test]
fn the_dockerfile_needs_no_registry_frontend_and_names_its_bases_by_build_arg() {
    let text = read("docker/Dockerfile");
    // Parser directives are the leading comment lines; `# syntax=` makes BuildKit pull a
    // frontend image, which cannot work offline.
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let directive = line.trim_start_matches('#').trim().to_ascii_lowercase();
        assert!(
            !directive.starts_with("syntax"),
            "Dockerfile: `{line}` fetches a frontend image from a registry"
        );
    }
    // Every FROM is a build argument, scratch or an earlier stage: nothing is hard-wired to
    // a registry, so an air-gapped site passes its own base images.
    let mut global_args = BTreeMap::new();
    let mut stages = BTreeSet::new();
    let mut seen_from = false;
    for line in text.lines().map(str::trim) {
        if let Some(arg) = line.strip_prefix("ARG ")
            && !seen_from
            && let Some((k, v)) = arg.split_once('=')
        {
            global_args.insert(k.to_string(), v.to_string());
        }
        if let Some(from) = line.strip_prefix("FROM ") {
            seen_from = true;
            let mut words = from.split_whitespace();
            let image = words.next().expect("FROM IMAGE");
            let ok = image == "scratch"
                || stages.contains(image)
                || (image.starts_with("${")
                    && global_args.contains_key(&image[2..image.len() - 1]))
                || image
                    .strip_prefix("binary-")
                    .is_some_and(|rest| rest == "${BINARY_FROM}");
            assert!(
                ok,
                "Dockerfile: FROM {image} is neither a build arg nor a stage"
            );
            if let (Some(as_), Some(name)) = (words.next(), words.next()) {
                assert!(as_.eq_ignore_ascii_case("AS"));
                stages.insert(name.to_string());
            }
        }
    }
    for arg in ["BUILD_IMAGE", "RUNTIME_IMAGE", "BINARY_FROM"] {
        assert!(global_args.contains_key(arg), "no global ARG {arg}=default");
    }
    assert_eq!(
        global_args["BINARY_FROM"], "source",
        "users build from source by default"
    );
    for stage in ["binary-source", "binary-prebuilt", "binary", "runtime"] {
        assert!(stages.contains(stage), "no stage {stage}: {stages:?}");
    }
    // The prebuilt binary must get through the ignore file that keeps target/ out.
    let ignore = read("docker/Dockerfile.dockerignore");
    assert!(ignore.lines().any(|l| l == "target"));
    assert!(ignore.lines().any(|l| l == "!target/release/sparkify"));
}

// =============================================================================================
// Live: the image, the container, the Pod and the Debian package, run for real.
//
// These need root, a Docker engine (Debian's docker.io), debootstrap and cargo-deb, and take a
// few minutes, so plain `cargo test` lists them as ignored. CI runs them with
//
//     bash deploy/test/run.sh
//
// which installs what is missing, builds the release binary once and runs
// `cargo test --test deploy -- --include-ignored` with DEPLOY_TEST_BINARY pointing at it.
//
// What they need is made when missing: the engine is started (without a bridge network) and
// stopped when the test process ends; the base images come from deploy/test/base-images.sh
// (cached); the image is built from deploy/docker/Dockerfile with [`binary`] (build arg BINARY_FROM=prebuilt; DEPLOY_TEST_IMAGE=TAG uses an image built
// otherwise, e.g. from source); the package is made with `cargo deb --no-build`. Every
// container runs with `--network none` or inside another container's network namespace.
// A missing tool or an engine that does not start fails the tests; nothing is skipped.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

#[path = "common/cql.rs"]
#[allow(unused_imports)]
mod cql;
mod util;

const RUNTIME_BASE: &str = "sparkify-base/runtime:bookworm";
const SYSTEMD_BASE: &str = "sparkify-base/systemd:bookworm";
const TEST_IMAGE: &str = "sparkify:deploy-test";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("deploy-{what}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

fn docker_path() -> String {
    std::env::var("DOCKER").unwrap_or_else(|_| "/usr/bin/docker".to_string())
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"))
}

/// Runs the command, fails the test unless it succeeds, and returns its trimmed stdout.
fn checked(cmd: &mut Command, what: &str) -> String {
    let out = output(cmd, what);
    assert!(out.status.success(), "{what} failed: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker_cmd(args: &[&str]) -> Command {
    engine();
    let mut c = Command::new(docker_path());
    c.args(args).env("DOCKER_BUILDKIT", "1");
    c
}

fn docker(args: &[&str]) -> Output {
    output(&mut docker_cmd(args), &format!("docker {}", args.join(" ")))
}

fn docker_ok(args: &[&str]) -> String {
    checked(&mut docker_cmd(args), &format!("docker {}", args.join(" ")))
}

fn engine_answers() -> bool {
    Command::new(docker_path())
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Docker engine that answers: the one already running, or one started here with no bridge
/// network (`--bridge=none --iptables=false`), stopped by a watcher shell once this test
/// process has exited, however it exits.
fn engine() {
    static ENGINE: OnceLock<()> = OnceLock::new();
    ENGINE.get_or_init(|| {
        if engine_answers() {
            return;
        }
        assert!(
            Path::new(&docker_path()).exists(),
            "no Docker client at {} (apt-get install docker.io)",
            docker_path()
        );
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dockerd-{}.log", std::process::id()));
        let file = fs::File::create(&log).expect("dockerd log");
        let script = format!(
            "command -v dockerd >/dev/null || {{ echo 'dockerd not found: apt-get install docker.io'; exit 1; }}
             dockerd --bridge=none --iptables=false & d=$!
             while kill -0 {pid} 2>/dev/null && kill -0 $d 2>/dev/null; do sleep 1; done
             kill $d 2>/dev/null; wait $d",
            pid = std::process::id()
        );
        let watcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("sh runs");
        // Reaped by a thread of its own: it outlives this function, and ends with the process.
        let (exit_tx, exit_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut watcher = watcher;
            let _ = exit_tx.send(watcher.wait());
        });
        let start = Instant::now();
        while !engine_answers() {
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            let exited = exit_rx.try_recv().ok();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(60),
                "the Docker engine did not start (exited: {exited:?}); {}:\n{log_text}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("started dockerd (log {})", log.display());
    });
}

/// The local base images, made by the same script CI and air-gapped builders use.
fn base_images() {
    static BASE: OnceLock<()> = OnceLock::new();
    BASE.get_or_init(|| {
        engine();
        let started = Instant::now();
        let out = checked(
            Command::new("bash")
                .arg(repo().join("deploy/test/base-images.sh"))
                .args(["runtime", "systemd"])
                .env("DOCKER", docker_path()),
            "deploy/test/base-images.sh runtime systemd",
        );
        eprintln!("{out}\nbase images ready in {:.1?}", started.elapsed());
    });
}

/// The binary that goes into the image and the package: `DEPLOY_TEST_BINARY` when set
/// (deploy/test/run.sh builds the release binary once and runs these tests from the debug
/// build `cargo test` already made), else the one of this build.
fn binary() -> PathBuf {
    match std::env::var_os("DEPLOY_TEST_BINARY") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "DEPLOY_TEST_BINARY={} is not a file",
                path.display()
            );
            path
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_sparkify")),
    }
}

/// The image under test, built from the shipped Dockerfile with [`binary`].
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Ok(tag) = std::env::var("DEPLOY_TEST_IMAGE") {
            docker_ok(&["image", "inspect", "--format", "{{.Id}}", &tag]);
            return tag;
        }
        base_images();
        // The context holds what the prebuilt path copies, at the paths the Dockerfile names;
        // Dockerfile.dockerignore (next to the Dockerfile) applies to it as to the repository.
        let ctx = scratch_dir("image-context");
        fs::create_dir_all(ctx.path().join("deploy/docker")).unwrap();
        fs::create_dir_all(ctx.path().join("target/release")).unwrap();
        fs::copy(
            repo().join("deploy/docker/healthcheck.sh"),
            ctx.path().join("deploy/docker/healthcheck.sh"),
        )
        .unwrap();
        fs::copy(binary(), ctx.path().join("target/release/sparkify")).unwrap();
        let started = Instant::now();
        let dockerfile = repo().join("deploy/docker/Dockerfile");
        docker_ok(&[
            "build",
            "--network",
            "none",
            "--quiet",
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-arg",
            "BINARY_FROM=prebuilt",
            "--build-arg",
            &format!("RUNTIME_IMAGE={RUNTIME_BASE}"),
            "-t",
            TEST_IMAGE,
            ctx.path().to_str().unwrap(),
        ]);
        eprintln!("built {TEST_IMAGE} in {:.1?}", started.elapsed());
        TEST_IMAGE.to_string()
    })
}

/// The Debian package, made by `cargo deb --no-build` from [`binary`].
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let cargo = env!("CARGO");
        let version = output(Command::new(cargo).args(["deb", "--version"]), "cargo deb");
        assert!(
            version.status.success(),
            "cargo-deb is missing (cargo install cargo-deb --locked): {}",
            show(&version)
        );
        // cargo-deb takes target/release/sparkify from the target directory it is given.
        let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("deploy-deb-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(work.join("target/release")).unwrap();
        fs::copy(binary(), work.join("target/release/sparkify")).unwrap();
        let started = Instant::now();
        checked(
            Command::new(cargo)
                .current_dir(repo())
                .args(["deb", "--no-build", "--fast", "--output"])
                .arg(work.join("out"))
                .env("CARGO_TARGET_DIR", work.join("target")),
            "cargo deb --no-build",
        );
        let deb = fs::read_dir(work.join("out"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("sparkify_") && name.ends_with(".deb")
            })
            .expect("cargo deb wrote sparkify_*.deb");
        eprintln!("made {} in {:.1?}", deb.display(), started.elapsed());
        deb
    })
}

fn unique(name: &str) -> String {
    format!("sparkify-test-{}-{name}", std::process::id())
}

/// Containers and volumes removed when the test ends, passed or not.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Cleanup {
    fn container(&mut self, name: &str) -> String {
        self.containers.push(name.to_string());
        name.to_string()
    }
    fn volume(&mut self, name: &str) -> String {
        self.volumes.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            let _ = Command::new(docker_path())
                .args(["rm", "-f", "-v", c])
                .output();
        }
        for v in &self.volumes {
            let _ = Command::new(docker_path())
                .args(["volume", "rm", v])
                .output();
        }
    }
}

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, name])
}

/// Polls `cond` every `every` until it holds; fails with `what` and `detail()` after `limit`.
fn poll(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            detail()
        );
        std::thread::sleep(every);
    }
}

/// The JSON log lines of a container, split into one list per start of the daemon.
fn container_runs(name: &str) -> Vec<Vec<serde_json::Value>> {
    let out = docker(&["logs", name]);
    let mut runs: Vec<Vec<serde_json::Value>> = Vec::new();
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
    {
        let value =
            serde_json::from_str(line).unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
        if value["message"] == "Serving /metrics, /healthz and /readyz" || runs.is_empty() {
            runs.push(Vec::new());
        }
        runs.last_mut().unwrap().push(value);
    }
    runs
}

fn with_message<'a>(
    run: &'a [serde_json::Value],
    message: &str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    let message = message.to_string();
    run.iter().filter(move |l| l["message"] == message.as_str())
}

fn count_in_run(name: &str, run: usize, message: &str) -> usize {
    container_runs(name)
        .get(run)
        .map_or(0, |r| with_message(r, message).count())
}

fn logs_text(name: &str) -> String {
    show(&docker(&["logs", "--tail", "60", name]))
}

/// Runs `f` on a thread inside the network namespace of process `pid` (a container's), the
/// way the kubelet's probes reach a Pod: from outside, through the Pod's own network.
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("network namespace of {pid}: {e}"));
    std::thread::spawn(move || {
        // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// `GET path` on 127.0.0.1:port in the network namespace of `pid`: (status, body).
fn http_get(pid: u32, port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    in_netns(pid, move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {addr} in the container: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
}

fn container_pid(name: &str) -> u32 {
    inspect(name, "{{.State.Pid}}").parse().expect("a pid")
}

/// `Uid:`/`Gid:` (real, effective, saved, fs) and the effective capabilities of a process.
fn process_identity(pid: u32) -> (Vec<u32>, Vec<u32>, String, String) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .trim()
            .to_string()
    };
    let ids =
        |s: String| -> Vec<u32> { s.split_whitespace().map(|n| n.parse().unwrap()).collect() };
    (
        ids(field("Uid:")),
        ids(field("Gid:")),
        field("CapEff:"),
        field("NoNewPrivs:"),
    )
}

type Tables = BTreeMap<&'static str, Vec<String>>;

/// The tables and ledger (path, status) of the state volume of a stopped container.
fn container_state(name: &str, dir: &str) -> (Tables, Vec<(String, String)>) {
    let out = scratch_dir("state");
    docker_ok(&[
        "cp",
        &format!("{name}:{dir}/."),
        out.path().to_str().unwrap(),
    ]);
    let db = out.path().join("sparkify.db");
    (util::all_tables(&db), ledger_entries(&db))
}

fn ledger_entries(db: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, status FROM ingest_ledger ORDER BY path")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `sparkify generate` on the host: the same seed gives the same bytes inside a container.
fn generate(dir: &Path, args: &[&str]) {
    let sb = util::Sandbox::new();
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    all.push(dir.to_str().unwrap());
    let out = sb.run(&all);
    assert_eq!(util::code(&out), 0, "{}", util::stderr(&out));
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    files
}

/// Every row of `part` is in `whole` (same table, same values).
fn assert_tables_contain(whole: &Tables, part: &Tables, context: &str) {
    for (table, rows) in part {
        let have: BTreeSet<&String> = whole[table].iter().collect();
        let missing: Vec<&String> = rows.iter().filter(|r| !have.contains(r)).take(5).collect();
        assert!(
            missing.is_empty(),
            "{context}: {table} lacks {} of {} rows, e.g. {missing:?}",
            rows.iter().filter(|r| !have.contains(r)).count(),
            rows.len()
        );
    }
}

/// The README's `docker run` line for the image, as words, with what this machine needs
/// substituted: the test's names, the drop folder, and `--network none` for the published
/// port (there is no bridge network here; probes go through the container's namespace).
fn readme_docker_run(name: &str, drop_dir: &Path, volume: &str, image: &str) -> Vec<String> {
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("docker run -d --name sparkify "));
    let mut line = String::new();
    for l in lines.by_ref() {
        match l.trim_end().strip_suffix('\\') {
            Some(head) => line.push_str(head),
            None => {
                line.push_str(l);
                break;
            }
        }
    }
    assert!(
        !line.is_empty(),
        "README.md: no `docker run -d --name sparkify` line"
    );
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| w.replace('"', ""))
        .collect();
    for flag in ["--read-only", "--cap-drop", "--security-opt"] {
        assert!(
            words.iter().any(|w| w == flag),
            "README's docker run line lacks {flag} (the Kubernetes manifest demands it): {line}"
        );
    }
    let mut out = Vec::new();
    let mut it = words.into_iter().skip(2).peekable();
    while let Some(w) = it.next() {
        match w.as_str() {
            "--name" => {
                it.next();
                out.extend(["--name".to_string(), name.to_string()]);
            }
            "-p" => {
                it.next();
                out.extend(["--network".to_string(), "none".to_string()]);
            }
            "-v" => {
                let spec = it.next().expect("-v SPEC");
                let spec = if let Some(rest) = spec.strip_prefix("$PWD/event_data:") {
                    format!("{}:{rest}", drop_dir.display())
                } else if let Some(rest) = spec.strip_prefix("sparkify-state:") {
                    format!("{volume}:{rest}")
                } else {
                    panic!("README's docker run line: unexpected volume {spec}")
                };
                out.extend(["-v".to_string(), spec]);
            }
            _ if it.peek().is_none() => out.push(image.to_string()),
            _ => out.push(w),
        }
    }
    out
}

/// The grace period of the README's `docker stop -t N sparkify`.
fn readme_stop_grace() -> String {
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("docker stop -t "))
        .expect("README.md: a `docker stop -t N sparkify` line");
    line.split_whitespace().nth(3).unwrap().to_string()
}

/// What the daemon logs for a file whose content the ledger already has (nothing is read).
const SKIPPED: &str = "Skipped file: same content already loaded";

/// A folder as a user makes it (`mkdir event_data`: 0755, owned by the user).
fn drop_folder() -> tempfile::TempDir {
    let dir = scratch_dir("drop");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Renames each file of `from` into `to` (under a hidden temporary name first), named
/// `prefix` + its name.
fn drop_files(from: &[PathBuf], to: &Path, prefix: &str) {
    for f in from {
        let name = format!("{prefix}{}", f.file_name().unwrap().to_string_lossy());
        util::drop_by_rename(&to.join(name), &fs::read(f).unwrap());
    }
}

/// A folder holding copies of these files: the input of a clean reference load.
fn folder_of(files: &[(&PathBuf, String)]) -> tempfile::TempDir {
    let dir = scratch_dir("reference");
    for (f, name) in files {
        fs::copy(f, dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
#[ignore = "needs root and Docker: bash deploy/test/run.sh"]
fn the_image_builds_offline_runs_as_uid_10001_and_reports_its_version() {
    let image = image();
    assert_eq!(inspect(image, "{{.Config.User}}"), "10001:10001");
    assert_eq!(
        inspect(image, "{{json .Config.Entrypoint}}"),
        r#"["/usr/local/bin/sparkify"]"#
    );
    assert_eq!(inspect(image, "{{.Config.StopSignal}}"), "SIGTERM");
    assert!(
        inspect(image, "{{json .Config.Healthcheck.Test}}").contains("sparkify-healthcheck"),
        "HEALTHCHECK"
    );
    let version = docker_ok(&["run", "--rm", "--network", "none", image, "--version"]);
    assert_eq!(version, format!("sparkify {}", env!("CARGO_PKG_VERSION")));
    // The image's environment is what `config show` reports inside it.
    let shown = docker_ok(&["run", "--rm", "--network", "none", image, "config", "show"]);
    let shown: toml::Value = toml::from_str(&shown).expect("config show prints TOML");
    for (key, value) in dockerfile_env() {
        let setting = setting_path(&key);
        let mut at = &shown;
        for part in setting.split('.') {
            at = at
                .get(part)
                .unwrap_or_else(|| panic!("config show in the image has no {setting}"));
        }
        assert_eq!(at.as_str(), Some(value.as_str()), "{setting} in the image");
    }
}

#[test]
#[ignore = "needs root and Docker: bash deploy/test/run.sh"]
fn the_readme_container_loads_drops_as_uid_10001_read_only_turns_healthy_and_stops_cleanly() {
    let mut cleanup = Cleanup::default();
    let name = cleanup.container(&unique("readme"));
    let volume = cleanup.volume(&unique("readme-state"));
    let drop = drop_folder();
    let args = readme_docker_run(&name, drop.path(), &volume, image());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&[&["run"][..], &args].concat());
    let settings = load(&dockerfile_env(), None, "Dockerfile ENV");
    let port = http_port(&settings, "Dockerfile ENV");
    poll(
        "the daemon to watch its folder",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || count_in_run(&name, 0, "Watching folder") == 1,
        || logs_text(&name),
    );

    // As the Kubernetes manifest demands: a non-root uid, no capabilities, no privilege gain,
    // nothing writable but the volumes.
    let pid = container_pid(&name);
    let (uids, gids, caps, nnp) = process_identity(pid);
    assert_eq!(uids, [10001; 4], "the daemon's uids");
    assert_eq!(gids, [10001; 4], "the daemon's gids");
    assert_eq!(caps, "0000000000000000", "effective capabilities");
    assert_eq!(nnp, "1", "no_new_privs");
    assert_eq!(inspect(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");

    // Files renamed into the bind-mounted folder on the host are loaded.
    let sample = csv_files(&util::sample_dir());
    drop_files(&sample, drop.path(), "");
    poll(
        "the 30 sample files to load",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || count_in_run(&name, 0, "Loaded file") == sample.len(),
        || logs_text(&name),
    );
    poll(
        "the HEALTHCHECK to say healthy",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || inspect(&name, "{{.State.Health.Status}}") == "healthy",
        || inspect(&name, "{{json .State.Health}}"),
    );
    assert_eq!(http_get(pid, port, "/healthz").0, 200);
    assert_eq!(http_get(pid, port, "/readyz").0, 200);
    let (_, metrics) = http_get(pid, port, "/metrics");
    assert!(
        metrics.contains(&format!(
            "sparkify_files_total{{outcome=\"loaded\"}} {}",
            sample.len()
        )),
        "{metrics}"
    );

    // docker stop in the middle of a load: exit 0, and every file in the ledger has all its
    // plays in the tables (nothing unacknowledged was ledgered).
    let generated = scratch_dir("batch");
    generate(
        generated.path(),
        &[
            "--rows",
            "600000",
            "--files",
            "30",
            "--seed",
            "5",
            "--first-session",
            "100000",
        ],
    );
    let batch = csv_files(generated.path());
    drop_files(&batch, drop.path(), "batch-");
    poll(
        "a first batch file to load",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || count_in_run(&name, 0, "Loaded file") > sample.len(),
        || logs_text(&name),
    );
    let grace = readme_stop_grace();
    let started = Instant::now();
    docker_ok(&["stop", "-t", &grace, &name]);
    let stop_took = started.elapsed();
    assert_eq!(
        inspect(&name, "{{.State.ExitCode}}"),
        "0",
        "{}",
        logs_text(&name)
    );
    assert!(
        stop_took < Duration::from_secs(grace.parse().unwrap()),
        "{stop_took:?}"
    );
    assert_eq!(
        container_runs(&name)[0]
            .last()
            .map(|l| l["message"].clone()),
        Some(serde_json::json!("Stopped")),
        "the last line of the first run"
    );
    let (tables, ledger) = container_state(&name, "/var/lib/sparkify");
    let loaded: BTreeSet<String> = ledger
        .iter()
        .filter(|(_, status)| status == "loaded")
        .map(|(path, _)| {
            Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let batch_loaded: Vec<&PathBuf> = batch
        .iter()
        .filter(|f| {
            loaded.contains(&format!(
                "batch-{}",
                f.file_name().unwrap().to_string_lossy()
            ))
        })
        .collect();
    assert!(
        !batch_loaded.is_empty() && batch_loaded.len() < batch.len(),
        "the stop came mid-load: {} of {} batch files ledgered",
        batch_loaded.len(),
        batch.len()
    );
    assert_tables_contain(
        &tables,
        &util::clean_run_tables(&util::sample_dir()),
        "after stop",
    );
    for f in &batch_loaded {
        let one = folder_of(&[(f, "one.csv".to_string())]);
        assert_tables_contain(
            &tables,
            &util::clean_run_tables(one.path()),
            &format!("ledgered {}", f.display()),
        );
    }
    eprintln!(
        "docker stop -t {grace} took {stop_took:.1?}; {} of {} batch files were ledgered",
        batch_loaded.len(),
        batch.len()
    );

    // Started again: the rest is loaded, nothing ledgered before is loaded again.
    docker_ok(&["start", &name]);
    let rest = batch.len() - batch_loaded.len();
    poll(
        "the rest of the batch to load after the restart",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || count_in_run(&name, 1, "Loaded file") == rest,
        || logs_text(&name),
    );
    // Every file of the folder is taken again at start-up, hashed, and the ones the ledger
    // knows are skipped without a row being read.
    poll(
        "every ledgered file to be recognised after the restart",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || count_in_run(&name, 1, SKIPPED) == loaded.len(),
        || logs_text(&name),
    );
    let runs = container_runs(&name);
    for line in with_message(&runs[1], "Loaded file") {
        let file = line["file"].as_str().unwrap();
        let base = Path::new(file).file_name().unwrap().to_string_lossy();
        assert!(
            !loaded.contains(base.as_ref()),
            "{file} was loaded again after the restart"
        );
    }
    docker_ok(&["stop", "-t", &grace, &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
    let (tables, _) = container_state(&name, "/var/lib/sparkify");
    let mut everything: Vec<(&PathBuf, String)> = sample
        .iter()
        .map(|f| (f, f.file_name().unwrap().to_string_lossy().into_owned()))
        .collect();
    everything.extend(batch.iter().map(|f| {
        (
            f,
            format!("batch-{}", f.file_name().unwrap().to_string_lossy()),
        )
    }));
    let all = folder_of(&everything);
    util::assert_tables_eq(
        &tables,
        &util::clean_run_tables(all.path()),
        "after stop and start",
    );

    // A third start with every file in the ledger takes nothing.
    docker_ok(&["start", &name]);
    poll(
        "the third start to watch its folder",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || count_in_run(&name, 2, "Watching folder") == 1,
        || logs_text(&name),
    );
    let files = sample.len() + batch.len();
    poll(
        "every file to be recognised on the third start",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || count_in_run(&name, 2, SKIPPED) == files,
        || logs_text(&name),
    );
    assert_eq!(
        count_in_run(&name, 2, "Loaded file"),
        0,
        "{}",
        logs_text(&name)
    );
    docker_ok(&["stop", "-t", &grace, &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
}

#[test]
#[ignore = "needs root and Docker: bash deploy/test/run.sh"]
fn docker_kill_in_the_middle_of_a_large_load_then_start_gives_the_clean_tables() {
    let mut cleanup = Cleanup::default();
    let name = cleanup.container(&unique("kill"));
    let volume = cleanup.volume(&unique("kill-state"));
    let drop = drop_folder();
    let args = readme_docker_run(&name, drop.path(), &volume, image());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&[&["run"][..], &args].concat());
    poll(
        "the daemon to watch its folder",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || count_in_run(&name, 0, "Watching folder") == 1,
        || logs_text(&name),
    );
    let generated = scratch_dir("big");
    generate(
        generated.path(),
        &[
            "--rows",
            "500000",
            "--seed",
            "11",
            "--first-session",
            "300000",
        ],
    );
    let big = csv_files(generated.path());
    drop_files(&big, drop.path(), "");
    poll(
        "the large file to be taken",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || count_in_run(&name, 0, "Taking file") == 1,
        || logs_text(&name),
    );
    docker_ok(&["kill", "--signal", "KILL", &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "137");
    assert_eq!(
        count_in_run(&name, 0, "Loaded file"),
        0,
        "the kill came after the load: {}",
        logs_text(&name)
    );
    docker_ok(&["start", &name]);
    poll(
        "the large file to load after docker start",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || count_in_run(&name, 1, "Loaded file") == 1,
        || logs_text(&name),
    );
    docker_ok(&["stop", "-t", &readme_stop_grace(), &name]);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0");
    let (tables, _) = container_state(&name, "/var/lib/sparkify");
    util::assert_tables_eq(
        &tables,
        &util::clean_run_tables(generated.path()),
        "kill -9 then start",
    );
}

/// Forwards TCP connections made to `listen` inside the network namespace of `pid` to
/// `upstream` in this process's namespace: how the Pod, which has no network but its own
/// loopback, reaches the CQL emulator that the test runs. Lives until the process ends.
fn bridge_into_netns(pid: u32, listen: SocketAddr, upstream: SocketAddr) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel::<TcpStream>();
    // Connections upstream are made from a thread that stays in the test's namespace.
    std::thread::spawn(move || {
        for down in accepted_rx {
            let Ok(up) = TcpStream::connect(upstream) else {
                let _ = down.shutdown(Shutdown::Both);
                continue;
            };
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).expect("the Pod's network namespace");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let listener = TcpListener::bind(listen).expect("listen in the Pod");
        ready_tx.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            if accepted_tx.send(stream).is_err() {
                break;
            }
        }
    });
    ready_rx.recv().expect("bridge listening");
}

/// The tables of an embedded load of `dir`, rendered as `Store::dump` renders them (and so
/// comparable with the CQL emulator's contents).
fn embedded_dump(dir: &Path) -> cql::Dump {
    let sb = util::Sandbox::new();
    let out = sb.run(&["ingest", "--quiet", dir.to_str().unwrap()]);
    assert_eq!(util::code(&out), 0, "{}", util::stderr(&out));
    let db = sb.db();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = sparkify::store::EmbeddedStore::open(&sparkify::config::EmbeddedSettings {
                path: db,
                ..Default::default()
            })
            .await
            .expect("embedded store");
            let mut dump = cql::Dump::new();
            for t in sparkify::store::TABLES {
                dump.insert(t, store.dump(t).await.expect("dump"));
            }
            dump
        })
    })
    .join()
    .unwrap()
}

/// Kubernetes quantities as Docker flags: CPU "500m" → "0.5", memory "256Mi" → "256m".
fn docker_cpus(quantity: &str) -> String {
    match quantity.strip_suffix('m') {
        Some(milli) => format!("{}", milli.parse::<f64>().unwrap() / 1000.0),
        None => quantity.to_string(),
    }
}

fn docker_memory(quantity: &str) -> String {
    for (suffix, unit) in [("Mi", "m"), ("Gi", "g"), ("Ki", "k")] {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return format!("{n}{unit}");
        }
    }
    panic!("memory quantity {quantity:?}: use Ki, Mi or Gi")
}

#[test]
#[ignore = "needs root and Docker: bash deploy/test/run.sh"]
fn the_sidecar_pod_loads_the_producers_files_answers_its_probes_and_outlives_the_producer() {
    // Everything below comes from kubernetes/sidecar.yaml: images, commands, environment,
    // mounts, users, security and resources, probe paths and ports, the grace period.
    let docs = sidecar_documents();
    let spec = pod_spec(&docs);
    let pod_sc = get(spec, &["securityContext"]);
    let uid = text(get(pod_sc, &["runAsUser"]));
    let gid = text(get(pod_sc, &["runAsGroup"]));
    let fs_group = text(get(pod_sc, &["fsGroup"]));
    assert_eq!(uid, "10001", "the image's user");
    let grace = text(get(spec, &["terminationGracePeriodSeconds"]));
    let (config_file, _, config_path) = sidecar_config_file(&docs);
    let settings = load(&sidecar_env(&docs), Some(config_file.path()), "the sidecar");
    let port = http_port(&settings, "the sidecar");
    let sparkify_spec = container(spec, "sparkify");
    let (live_path, live_port) = probe_port(sparkify_spec, "livenessProbe");
    let (ready_path, ready_port) = probe_port(sparkify_spec, "readinessProbe");
    assert_eq!((live_port, ready_port), (port, port));

    let mut cleanup = Cleanup::default();
    let image = image();
    let pod = cleanup.container(&unique("pod"));

    // Volumes: each emptyDir a fresh named volume; the ConfigMap and the Secret as read-only
    // folders holding their keys, the Secret's files group-owned by the fsGroup.
    let files = scratch_dir("pod-files");
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for v in seq(get(spec, &["volumes"])) {
        let vname = text(get(v, &["name"]));
        let source = if v.get("emptyDir").is_some() {
            cleanup.volume(&unique(&format!("pod-{vname}")))
        } else if let Some(map) = v.get("configMap") {
            let map_name = text(get(map, &["name"]));
            let map = kind_of(&docs, "ConfigMap")
                .into_iter()
                .find(|m| text(get(m, &["metadata", "name"])) == map_name)
                .expect("the ConfigMap");
            let dir = files.path().join(&vname);
            fs::create_dir_all(&dir).unwrap();
            for (k, value) in get(map, &["data"]).as_mapping().unwrap() {
                fs::write(dir.join(text(k)), text(value)).unwrap();
            }
            dir.display().to_string()
        } else if let Some(secret) = v.get("secret") {
            let secret_name = text(get(secret, &["secretName"]));
            let secret = kind_of(&docs, "Secret")
                .into_iter()
                .find(|m| text(get(m, &["metadata", "name"])) == secret_name)
                .expect("the Secret");
            let mode = u32::from_str_radix(&text(get(v, &["secret", "defaultMode"])), 8)
                .or_else(|_| text(get(v, &["secret", "defaultMode"])).parse())
                .unwrap();
            let dir = files.path().join(&vname);
            fs::create_dir_all(&dir).unwrap();
            for (k, value) in get(secret, &["stringData"]).as_mapping().unwrap() {
                let file = dir.join(text(k));
                fs::write(&file, text(value)).unwrap();
                std::os::unix::fs::chown(&file, Some(0), Some(fs_group.parse().unwrap())).unwrap();
                fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            }
            dir.display().to_string()
        } else {
            panic!("sidecar.yaml: volume {vname} is neither an emptyDir, a ConfigMap nor a Secret")
        };
        sources.insert(vname, source);
    }
    assert!(
        config_path.starts_with("/etc/sparkify"),
        "{}",
        config_path.display()
    );

    // The Pod's network namespace: a container that only sleeps (Kubernetes' pause), with the
    // cluster's Service names pointing at its loopback, where the bridge to the emulator waits.
    let mut pod_args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        pod.clone(),
        "--network".into(),
        "none".into(),
        "--read-only".into(),
        "--cap-drop".into(),
        "ALL".into(),
    ];
    let nodes: Vec<(String, u16)> = settings
        .cassandra
        .nodes
        .iter()
        .map(|n| {
            let (host, port) = n.rsplit_once(':').unwrap();
            (host.to_string(), port.parse().unwrap())
        })
        .collect();
    for (host, _) in &nodes {
        pod_args.extend(["--add-host".into(), format!("{host}:127.0.0.1")]);
    }
    pod_args.extend([
        "--entrypoint".into(),
        "/bin/sleep".into(),
        image.to_string(),
        "infinity".into(),
    ]);
    docker_ok(&pod_args.iter().map(String::as_str).collect::<Vec<_>>());
    let pod_pid = container_pid(&pod);
    let emulator = cql::Emulator::start();
    for (_, node_port) in &nodes {
        bridge_into_netns(
            pod_pid,
            SocketAddr::from(([127, 0, 0, 1], *node_port)),
            emulator.addr,
        );
    }

    // The containers, in the Pod's order, as the kubelet would start them.
    let mut names = BTreeMap::new();
    for c in seq(get(spec, &["containers"])) {
        let cname = text(get(c, &["name"]));
        let name = cleanup.container(&unique(&format!("pod-{cname}")));
        let manifest_image = text(get(c, &["image"]));
        assert_eq!(
            manifest_image,
            text(get(sparkify_spec, &["image"])),
            "{cname}: the producer runs sparkify's own image (its generator)"
        );
        let sc = get(c, &["securityContext"]);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--network".into(),
            format!("container:{pod}"),
            "--user".into(),
            format!("{uid}:{gid}"),
            "--group-add".into(),
            fs_group.clone(),
        ];
        if sc.get("readOnlyRootFilesystem").and_then(Value::as_bool) == Some(true) {
            args.push("--read-only".into());
        }
        if sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in seq(get(sc, &["capabilities", "drop"])) {
            args.extend(["--cap-drop".into(), text(cap)]);
        }
        args.extend([
            "--cpus".into(),
            docker_cpus(&text(get(c, &["resources", "limits", "cpu"]))),
            "--memory".into(),
            docker_memory(&text(get(c, &["resources", "limits", "memory"]))),
        ]);
        if let Some(env) = c.get("env") {
            for var in seq(env) {
                let value = text(get(var, &["value"]));
                args.extend([
                    "-e".into(),
                    format!("{}={value}", text(get(var, &["name"]))),
                ]);
            }
        }
        if cname == "sparkify" {
            // What the CQL emulator cannot do (DESIGN.md): serve schema metadata, a metadata
            // refresh after DDL, or name a datacenter. Everything else is the manifest's.
            for var in [
                "SPARKIFY_CASSANDRA__FETCH_SCHEMA_METADATA=false",
                "SPARKIFY_CASSANDRA__REFRESH_METADATA_AFTER_DDL=false",
                "SPARKIFY_CASSANDRA__LOCAL_DC=",
            ] {
                args.extend(["-e".into(), var.into()]);
            }
        }
        for (path, volume, read_only) in mounts(c) {
            let mut spec = format!("{}:{}", sources[&volume], path.display());
            if read_only {
                spec.push_str(":ro");
            }
            args.extend(["-v".into(), spec]);
        }
        let command: Vec<String> = c
            .get("command")
            .map(|v| seq(v).iter().map(text).collect())
            .unwrap_or_default();
        if let Some(entrypoint) = command.first() {
            args.extend(["--entrypoint".into(), entrypoint.clone()]);
        }
        args.push(image.to_string());
        args.extend(command.iter().skip(1).cloned());
        if let Some(a) = c.get("args") {
            args.extend(seq(a).iter().map(text));
        }
        docker_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        names.insert(cname, name);
    }
    let sparkify = &names["sparkify"];
    let producer = &names["producer"];

    // One network namespace: the probes reach sparkify through the Pod's.
    let sparkify_pid = container_pid(sparkify);
    assert_eq!(
        fs::read_link(format!("/proc/{sparkify_pid}/ns/net")).unwrap(),
        fs::read_link(format!("/proc/{pod_pid}/ns/net")).unwrap(),
        "sparkify is in the Pod's network namespace"
    );
    poll(
        "sparkify to load the producer's first batch",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || count_in_run(sparkify, 0, "Loaded file") == 1,
        || format!("{}\nproducer: {}", logs_text(sparkify), logs_text(producer)),
    );
    assert_eq!(http_get(pod_pid, port, &live_path).0, 200, "{live_path}");
    let (status, body) = http_get(pod_pid, port, &ready_path);
    assert_eq!(status, 200, "{ready_path}: {body}");
    // after_ingest = "delete": the emptyDir is emptied once the file is in the ledger.
    let watched = settings.watch.dir.display().to_string();
    poll(
        "the loaded file to be deleted from the emptyDir",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || docker_ok(&["exec", sparkify, "ls", "-A", &watched]).is_empty(),
        || docker_ok(&["exec", sparkify, "ls", "-lA", &watched]),
    );

    // The producer dies: sparkify goes on, unrestarted, live and ready.
    docker_ok(&["kill", "--signal", "KILL", producer]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(inspect(sparkify, "{{.State.Running}}"), "true");
    assert_eq!(
        container_pid(sparkify),
        sparkify_pid,
        "sparkify was not restarted"
    );
    assert_eq!(http_get(pod_pid, port, &live_path).0, 200);
    assert_eq!(http_get(pod_pid, port, &ready_path).0, 200);
    // Restarted, as the kubelet would, the producer writes its first batch again: the same
    // bytes, recognised from the ledger and not loaded twice.
    docker_ok(&["start", producer]);
    poll(
        "the repeated batch to be recognised",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || count_in_run(sparkify, 0, SKIPPED) == 1,
        || logs_text(sparkify),
    );
    assert_eq!(count_in_run(sparkify, 0, "Loaded file"), 1);
    docker_ok(&["kill", "--signal", "KILL", producer]);

    let started = Instant::now();
    docker_ok(&["stop", "-t", &grace, sparkify]);
    assert_eq!(
        inspect(sparkify, "{{.State.ExitCode}}"),
        "0",
        "{}",
        logs_text(sparkify)
    );
    assert!(started.elapsed() < Duration::from_secs(grace.parse().unwrap()));

    // What reached the store is exactly what the producer's first batch holds.
    let script = text(&seq(get(container(spec, "producer"), &["args"]))[0]);
    let words: Vec<&str> = script.split_whitespace().collect();
    let rows = words
        .iter()
        .position(|w| *w == "--rows")
        .map(|i| words[i + 1])
        .expect("the producer runs sparkify generate --rows N");
    assert!(
        script.contains("n=0")
            && script.contains("n=$((n + 1))")
            && script.contains("--seed \"$n\""),
        "the producer's first batch is seed 1: {script}"
    );
    let batch = scratch_dir("producer-batch");
    generate(batch.path(), &["--rows", rows, "--seed", "1"]);
    let stored = emulator.stop();
    cql::assert_same(&stored, &embedded_dump(batch.path()));
}

/// A container booting systemd as PID 1: a machine to install the package on. Removed when
/// dropped.
struct Machine {
    name: String,
    _cleanup: Cleanup,
}

impl Machine {
    fn boot(label: &str) -> Machine {
        base_images();
        let mut cleanup = Cleanup::default();
        let name = cleanup.container(&unique(label));
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--cap-add",
            "SYS_ADMIN",
            "-e",
            "container=docker",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--stop-signal",
            "SIGRTMIN+3",
            SYSTEMD_BASE,
            "/lib/systemd/systemd",
        ]);
        let machine = Machine {
            name,
            _cleanup: cleanup,
        };
        let mut state = String::new();
        poll(
            "systemd to finish booting",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                state = machine.try_sh("systemctl is-system-running").0;
                state != "starting" && state != "initializing" && !state.is_empty()
            },
            || logs_text(&machine.name),
        );
        assert_eq!(
            state,
            "running",
            "{}",
            machine.try_sh("systemctl --failed --no-pager").0
        );
        machine
    }

    /// `sh -c script` in the machine: (trimmed stdout, success).
    fn try_sh(&self, script: &str) -> (String, bool) {
        let out = docker(&["exec", &self.name, "sh", "-c", script]);
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            out.status.success(),
        )
    }

    fn sh(&self, script: &str) -> String {
        let out = docker(&["exec", &self.name, "sh", "-c", script]);
        assert!(
            out.status.success(),
            "in the machine: {script}\n{}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// One property of sparkify.service (`systemctl show -p NAME --value`).
    fn unit(&self, property: &str) -> String {
        self.sh(&format!("systemctl show -p {property} --value sparkify"))
    }

    /// The service's journal lines, of one invocation (InvocationID) or all.
    fn journal(&self, invocation: Option<&str>) -> Vec<String> {
        let filter = invocation.map_or(String::new(), |id| format!(" _SYSTEMD_INVOCATION_ID={id}"));
        self.sh(&format!("journalctl -u sparkify -o cat --no-pager{filter}"))
            .lines()
            .map(String::from)
            .collect()
    }

    fn journal_count(&self, invocation: Option<&str>, needle: &str) -> usize {
        self.journal(invocation)
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn journal_tail(&self) -> String {
        self.sh("journalctl -u sparkify -o short-precise --no-pager -n 40; systemctl status sparkify --no-pager || true")
    }

    fn install_package(&self) {
        let deb = deb();
        let inside = format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());
        docker_ok(&[
            "cp",
            deb.to_str().unwrap(),
            &format!("{}:{inside}", self.name),
        ]);
        // No network: every dependency must already be on a minimal Debian with systemd.
        self.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y {inside}"
        ));
    }

    /// A producer: a user in group sparkify-drop that writes each file of `host_dir` under a
    /// temporary name in the watched folder and renames it into place.
    fn drop_as_producer(&self, host_dir: &Path, prefix: &str) {
        let inside = format!("/tmp/drop-{prefix}{}", std::process::id());
        docker_ok(&[
            "cp",
            host_dir.to_str().unwrap(),
            &format!("{}:{inside}", self.name),
        ]);
        self.sh("id producer >/dev/null 2>&1 || useradd --no-create-home --groups sparkify-drop producer");
        self.sh(&format!(
            "chmod -R a+rX {inside} && runuser -u producer -- sh -c '\
             for f in {inside}/*.csv; do n={prefix}$(basename \"$f\"); \
             cp \"$f\" /srv/sparkify/event_data/.$n.tmp && \
             mv /srv/sparkify/event_data/.$n.tmp /srv/sparkify/event_data/$n; done'"
        ));
    }

    /// The three query tables from the service's state directory (DynamicUser keeps it in
    /// /var/lib/private/sparkify).
    fn tables(&self) -> Tables {
        let out = scratch_dir("machine-state");
        docker_ok(&[
            "cp",
            &format!("{}:/var/lib/private/sparkify/.", self.name),
            out.path().to_str().unwrap(),
        ]);
        util::all_tables(&out.path().join("sparkify.db"))
    }

    fn wait_active(&self, what: &str) {
        poll(
            what,
            Duration::from_secs(60),
            Duration::from_millis(200),
            || self.unit("ActiveState") == "active" && self.unit("SubState") == "running",
            || self.journal_tail(),
        );
    }
}

#[test]
#[ignore = "needs root, Docker and cargo-deb: bash deploy/test/run.sh"]
fn the_deb_installs_a_service_that_loads_drops_restarts_without_reloading_and_removes_cleanly() {
    let m = Machine::boot("deb");
    m.install_package();

    // Installed as a Debian maintainer expects: the shipped unit unchanged, enabled and
    // started, the group and the watched folder made, the configuration as conffiles.
    assert_eq!(
        m.sh("cat /lib/systemd/system/sparkify.service"),
        read("systemd/sparkify.service").trim_end()
    );
    assert_eq!(m.sh("systemctl is-enabled sparkify"), "enabled");
    m.wait_active("the service to run after install");
    m.sh("systemctl enable --now sparkify");
    assert_eq!(m.unit("Type"), "notify");
    assert!(
        m.sh("journalctl -u sparkify -o cat --no-pager")
            .contains("Started sparkify.service"),
        "systemd saw READY=1"
    );
    assert_eq!(
        m.sh("stat -c '%a %U %G' /srv/sparkify/event_data"),
        "2770 root sparkify-drop"
    );
    assert_eq!(
        m.sh("cat /var/lib/dpkg/info/sparkify.conffiles"),
        "/etc/sparkify/sparkify.env\n/etc/sparkify/default.toml"
    );
    assert_eq!(m.sh("stat -c '%a' /etc/sparkify/sparkify.env"), "640");
    let main_pid = m.unit("MainPID");
    // LimitNOFILE= in effect: soft and hard limit both raised to it, or to the hard limit of
    // the machine's PID 1 where that is lower (systemd cannot hand out more than it has; a
    // host's systemd has fs.nr_open, a container's what the engine was given).
    let open_files = |pid: &str| -> Vec<u64> {
        let line = m.sh(&format!("grep 'Max open files' /proc/{pid}/limits"));
        line.split_whitespace()
            .skip(3)
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let want: u64 = unit_value("LimitNOFILE").parse().unwrap();
    let ceiling = open_files("1")[1];
    let expected = want.min(ceiling);
    assert_eq!(
        open_files(&main_pid),
        [expected, expected],
        "LimitNOFILE={want} (PID 1's hard limit {ceiling})"
    );
    assert!(expected > 1024, "more than the default soft limit");
    if expected < want {
        eprintln!("LimitNOFILE={want} is capped at {ceiling} on this machine (PID 1's hard limit)");
    }
    // DynamicUser=: a uid of its own, and the group of the watched folder.
    let status = m.sh(&format!("grep -E '^(Uid|Groups):' /proc/{main_pid}/status"));
    let drop_gid = m.sh("getent group sparkify-drop | cut -d: -f3");
    assert!(!status.contains("Uid:\t0\t"), "not root: {status}");
    assert!(
        status.contains(&drop_gid),
        "in sparkify-drop ({drop_gid}): {status}"
    );

    // A producer in sparkify-drop drops the sample by rename; every play is queryable.
    let invocation = m.unit("InvocationID");
    m.drop_as_producer(&util::sample_dir(), "");
    let sample = csv_files(&util::sample_dir());
    poll(
        "the journal to show the 30 files loaded",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || m.journal_count(Some(&invocation), "Loaded file") == sample.len(),
        || m.journal_tail(),
    );
    let journal = m.journal(Some(&invocation));
    for f in &sample {
        let path = format!(
            "/srv/sparkify/event_data/{}",
            f.file_name().unwrap().to_string_lossy()
        );
        assert!(
            journal.iter().any(|l| l.contains("Loaded file")
                && l.contains(&path)
                && l.contains("song_plays=")),
            "no journal line for {path}:\n{}",
            journal.join("\n")
        );
    }
    let answer =
        m.sh("SPARKIFY_EMBEDDED__PATH=/var/lib/sparkify/sparkify.db sparkify query session 338 4");
    assert!(answer.contains("Faithless"), "{answer}");

    // restart: a new process, nothing loaded again.
    m.sh("systemctl restart sparkify");
    m.wait_active("the service to run after restart");
    let second = m.unit("InvocationID");
    assert_ne!(second, invocation);
    poll(
        "the restarted daemon to recognise the 30 files",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || m.journal_count(Some(&second), SKIPPED) == sample.len(),
        || m.journal_tail(),
    );
    assert_eq!(
        m.journal_count(Some(&second), "Loaded file"),
        0,
        "{}",
        m.journal_tail()
    );
    assert_eq!(m.unit("NRestarts"), "0");

    // stop: within TimeoutStopSec, result success, exit 0.
    let started = Instant::now();
    m.sh("systemctl stop sparkify");
    let took = started.elapsed();
    assert!(took < duration(&unit_value("TimeoutStopSec")), "{took:?}");
    assert_eq!(m.unit("Result"), "success");
    assert_eq!(m.unit("ExecMainStatus"), "0");
    assert_eq!(m.unit("ActiveState"), "inactive");
    util::assert_tables_eq(
        &m.tables(),
        &util::clean_run_tables(&util::sample_dir()),
        "the service's tables",
    );

    // remove: stopped, unit gone, state and configuration kept; reinstalling loads nothing.
    m.sh("systemctl start sparkify");
    m.wait_active("the service to run before remove");
    m.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y sparkify");
    assert_ne!(m.try_sh("systemctl is-active sparkify").0, "active");
    assert!(
        !m.try_sh("test -e /usr/bin/sparkify").1,
        "the binary is gone"
    );
    m.sh("test -f /var/lib/private/sparkify/sparkify.db && test -f /etc/sparkify/sparkify.env");
    m.install_package();
    m.wait_active("the service to run after reinstall");
    let third = m.unit("InvocationID");
    poll(
        "the reinstalled service to recognise the 30 files",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || m.journal_count(Some(&third), SKIPPED) == sample.len(),
        || m.journal_tail(),
    );
    assert_eq!(
        m.journal_count(Some(&third), "Loaded file"),
        0,
        "{}",
        m.journal_tail()
    );

    // purge: the state and the configuration go; the producers' files stay.
    m.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y sparkify");
    for gone in [
        "/var/lib/private/sparkify",
        "/var/lib/sparkify",
        "/etc/sparkify",
        "/lib/systemd/system/sparkify.service",
        "/etc/systemd/system/multi-user.target.wants/sparkify.service",
    ] {
        assert!(
            !m.try_sh(&format!("test -e {gone} || test -L {gone}")).1,
            "{gone} is left after purge"
        );
    }
    assert_eq!(
        m.sh("ls /srv/sparkify/event_data | wc -l"),
        sample.len().to_string(),
        "the dropped files are the producers' and stay"
    );
}

#[test]
#[ignore = "needs root, Docker and cargo-deb: bash deploy/test/run.sh"]
fn under_systemd_kill_9_mid_load_restarts_to_the_clean_tables_and_the_watchdog_kills_a_hung_daemon()
{
    let m = Machine::boot("crash");
    m.install_package();
    m.wait_active("the service to run after install");
    let first = m.unit("InvocationID");
    let generated = scratch_dir("systemd-big");
    generate(
        generated.path(),
        &[
            "--rows",
            "500000",
            "--seed",
            "13",
            "--first-session",
            "500000",
        ],
    );
    m.drop_as_producer(generated.path(), "");
    poll(
        "the large file to be taken",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || m.journal_count(Some(&first), "Taking file") == 1,
        || m.journal_tail(),
    );
    m.sh("kill -9 $(systemctl show -p MainPID --value sparkify)");
    poll(
        "Restart=on-failure to start the daemon again",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || m.unit("NRestarts") == "1" && m.unit("SubState") == "running",
        || m.journal_tail(),
    );
    assert_eq!(
        m.journal_count(Some(&first), "Loaded file"),
        0,
        "the kill came after the load: {}",
        m.journal_tail()
    );
    let second = m.unit("InvocationID");
    poll(
        "the large file to load after the restart",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || m.journal_count(Some(&second), "Loaded file") == 1,
        || m.journal_tail(),
    );

    // A daemon that stops answering (SIGSTOP) misses its watchdog pings: systemd kills it
    // and starts a new one. A drop-in shortens WatchdogSec= for the test.
    m.sh("mkdir -p /etc/systemd/system/sparkify.service.d && \
          printf '[Service]\\nWatchdogSec=3s\\n' >/etc/systemd/system/sparkify.service.d/watchdog.conf && \
          systemctl daemon-reload && systemctl restart sparkify");
    m.wait_active("the service to run with the short watchdog");
    let hung = m.unit("MainPID");
    let restarts: u32 = m.unit("NRestarts").parse().unwrap();
    m.sh(&format!("kill -STOP {hung}"));
    poll(
        "the watchdog to restart the stopped daemon",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            m.unit("NRestarts").parse::<u32>().unwrap() > restarts
                && m.unit("SubState") == "running"
                && m.unit("MainPID") != hung
        },
        || m.journal_tail(),
    );
    let log = m.sh("journalctl -u sparkify -o cat --no-pager");
    assert!(log.contains("Watchdog timeout"), "{log}");
    assert!(log.contains("Failed with result 'watchdog'"), "{log}");

    m.sh("systemctl stop sparkify");
    assert_eq!(m.unit("Result"), "success");
    util::assert_tables_eq(
        &m.tables(),
        &util::clean_run_tables(generated.path()),
        "kill -9 under systemd",
    );
}

#[test]
#[ignore = "needs root, Docker and cargo-deb: bash deploy/test/run.sh"]
fn under_systemd_a_bad_setting_fails_the_start_once_with_the_reason_and_no_restart_loop() {
    let m = Machine::boot("badconfig");
    m.install_package();
    m.wait_active("the service to run after install");
    m.sh("echo SPARKIFY_WATCH__MODE=sometimes >>/etc/sparkify/sparkify.env");
    let (_, ok) = m.try_sh("systemctl restart sparkify");
    assert!(!ok, "systemctl restart reports the failed start");
    // Three times RestartSec: a restart loop would have tried again by now.
    let wait = duration(&unit_value("RestartSec")) * 3;
    std::thread::sleep(wait);
    assert_eq!(m.unit("ActiveState"), "failed", "{}", m.journal_tail());
    assert_eq!(m.unit("NRestarts"), "0", "{}", m.journal_tail());
    assert_eq!(m.unit("ExecMainStatus"), "2");
    let log = m.sh("journalctl -u sparkify -o cat --no-pager");
    assert_eq!(
        log.matches("\"sometimes\" is not one of: events, poll for key `watch.mode`")
            .count(),
        1,
        "the reason, once: {log}"
    );
    // Fixed, it starts.
    m.sh("sed -i '/sometimes/d' /etc/sparkify/sparkify.env && systemctl reset-failed sparkify && systemctl start sparkify");
    m.wait_active("the service to run with the setting fixed");
}
