//! Where the settings come from: the built-in defaults, `config/default.toml`, `--config FILE`,
//! `SPARKIFY_<SECTION>__<KEY>` variables and `--set` overrides, merged and then validated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::sections::Settings;
use super::{ConfigError, DEFAULT_FILE, ENV_PREFIX};

/// Where the settings come from, besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--set key=value` pairs, highest precedence.
    pub overrides: Vec<String>,
    /// Environment to read instead of the process's (tests).
    pub env: Option<BTreeMap<String, String>>,
    /// Skip `config/default.toml` in the working directory.
    pub skip_default_file: bool,
}
impl Settings {
    /// Loads and checks the settings from every layer.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if !sources.skip_default_file && Path::new(DEFAULT_FILE).is_file() {
            builder = builder.add_source(config::File::with_name(DEFAULT_FILE));
        }
        if let Some(file) = &sources.file {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only SPARKIFY_<SECTION>__<KEY> names are settings (SPARKIFY_CONFIG, for one, is the
        // --config flag). Values stay text: serde turns them into numbers or booleans where a
        // setting wants one, so a username such as "007" is not read as the number 7.
        let vars: std::collections::HashMap<String, String> = match &sources.env {
            Some(vars) => vars.clone().into_iter().collect(),
            None => process_env()?,
        };
        let prefix = format!("{ENV_PREFIX}_");
        let vars: std::collections::HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k[prefix.len()..].contains("__"))
            .collect();
        let nodes_var = format!("{prefix}CASSANDRA__NODES");
        let nodes: Option<Vec<String>> = vars.get(&nodes_var).map(|v| {
            v.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        });
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        );
        if let Some(nodes) = nodes {
            builder = builder.set_override("cassandra.nodes", nodes)?;
        }
        for pair in &sources.overrides {
            let (key, value) = pair
                .split_once('=')
                .filter(|(k, _)| k.contains('.'))
                .ok_or_else(|| ConfigError::BadOverride(pair.clone()))?;
            builder = builder.set_override(key.trim(), value.trim())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The effective settings as TOML, with secrets masked (`sparkify config show`).
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.cassandra.password.is_empty() {
            shown.cassandra.password = "********".into();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// The process's `SPARKIFY_*` variables. Other variables are never looked at, so one that is
/// not UTF-8 cannot stop start-up; a setting variable that is not UTF-8 is refused by name.
fn process_env() -> Result<std::collections::HashMap<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}_");
    let mut vars = std::collections::HashMap::new();
    for (name, value) in std::env::vars_os() {
        let bytes = name.as_encoded_bytes();
        if !bytes.starts_with(prefix.as_bytes()) {
            continue;
        }
        let is_setting = bytes[prefix.len()..].windows(2).any(|w| w == b"__");
        match (name.to_str(), value.to_str()) {
            (Some(n), Some(v)) => {
                vars.insert(n.to_string(), v.to_string());
            }
            // SPARKIFY_CONFIG, for one, is a path and not read here.
            _ if !is_setting => {}
            (n, _) => {
                return Err(ConfigError::NotUnicode {
                    name: name.to_string_lossy().into_owned(),
                    part: if n.is_none() { "name" } else { "value" },
                });
            }
        }
    }
    Ok(vars)
}
