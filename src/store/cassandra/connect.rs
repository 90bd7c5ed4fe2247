//! The session: credentials, TLS, the execution profile (consistency, timeouts, token-aware and
//! datacenter-aware routing) and the connection to the cluster's nodes.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;

use super::errors::{classify_new_session, store_error};
use crate::config::{CassandraSettings, Compression, TlsSettings};
use crate::store::StoreError;

/// Opens the session the whole process shares. An unreachable cluster is
/// [`StoreError::Unavailable`]; wrong credentials and bad settings are permanent.
pub(super) async fn connect(settings: &CassandraSettings) -> Result<Session, StoreError> {
    let consistency = crate::config::parse_consistency(&settings.consistency)
        .map_err(|problem| StoreError::Rejected(format!("cassandra.consistency {problem}")))?;
    let password = password(settings)?;
    let tls = tls_config(&settings.tls)?;

    let mut policy = DefaultPolicy::builder().token_aware(true);
    if !settings.local_dc.is_empty() {
        // Remote datacenters only as a last resort: LOCAL_QUORUM cannot be met there.
        policy = policy
            .prefer_datacenter(settings.local_dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .request_timeout(Some(Duration::from_millis(settings.request_timeout_ms)))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&settings.nodes)
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle())
        .compression(match settings.compression {
            Compression::None => None,
            Compression::Lz4 => Some(scylla::client::Compression::Lz4),
            Compression::Snappy => Some(scylla::client::Compression::Snappy),
        })
        .fetch_schema_metadata(settings.fetch_schema_metadata)
        .keyspaces_to_fetch([settings.keyspace.clone()])
        .refresh_metadata_on_auto_schema_agreement(settings.refresh_metadata_after_ddl);
    if !settings.username.is_empty() {
        builder = builder.user(settings.username.clone(), password);
    }
    if let Some(tls) = tls {
        builder = builder.tls_context(Some(tls));
    }

    let nodes = settings.nodes.join(",");
    // A node that accepts connections but never answers would otherwise hold start-up
    // forever; the daemon retries an unavailable store with backoff.
    let patience = Duration::from_millis(
        settings
            .connect_timeout_ms
            .saturating_add(settings.request_timeout_ms),
    );
    let session = match tokio::time::timeout(patience, builder.build()).await {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            return Err(store_error(
                classify_new_session(&e),
                &format!("cannot connect to {nodes}"),
                &e,
            ));
        }
        Err(_) => {
            return Err(StoreError::Unavailable(format!(
                "cannot connect to {nodes}: no answer within {} ms",
                patience.as_millis()
            )));
        }
    };

    if !settings.local_dc.is_empty() {
        let state = session.get_cluster_state();
        let mut dcs: Vec<String> = state
            .get_nodes_info()
            .iter()
            .filter_map(|n| n.datacenter.clone())
            .collect();
        dcs.sort();
        dcs.dedup();
        // With no datacenter known, every request would meet an empty query plan (remote
        // nodes are not used, see above): say so now rather than retry forever.
        if dcs.is_empty() {
            return Err(StoreError::Rejected(format!(
                "cassandra.local_dc is {:?}, but the cluster reports no datacenters; \
                 leave it empty for this cluster",
                settings.local_dc
            )));
        } else if !dcs.iter().any(|dc| dc == &settings.local_dc) {
            return Err(StoreError::Rejected(format!(
                "cassandra.local_dc is {:?}, which is not a datacenter of this cluster \
                 (it has: {})",
                settings.local_dc,
                dcs.join(", ")
            )));
        }
    }

    Ok(session)
}

/// Reads the password from `password_file` (first line) or `password`.
fn password(s: &CassandraSettings) -> Result<String, StoreError> {
    if s.password_file.is_empty() {
        return Ok(s.password.clone());
    }
    let text = std::fs::read_to_string(&s.password_file).map_err(|e| {
        StoreError::Rejected(format!(
            "cannot read cassandra.password_file {}: {e}",
            s.password_file
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The rustls configuration for `[cassandra.tls]`, or `None` when TLS is off. The driver
/// checks each node's certificate against the node's IP address, so node certificates need
/// their addresses as subject alternative names.
fn tls_config(t: &TlsSettings) -> Result<Option<Arc<rustls::ClientConfig>>, StoreError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    if !t.enabled {
        return Ok(None);
    }
    let bad = |key: &str, path: &str, e: &dyn std::fmt::Display| {
        StoreError::Rejected(format!("cannot use cassandra.tls.{key} {path}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    if t.ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A malformed system certificate should not stop the others from being used.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(StoreError::Rejected(
                "cassandra.tls.ca_file is empty and no system CA certificates were found; \
                 set it to the PEM file of the CA that signed the nodes' certificates"
                    .into(),
            ));
        }
    } else {
        let certs = CertificateDer::pem_file_iter(&t.ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad("ca_file", &t.ca_file, &e))?;
        if certs.is_empty() {
            return Err(bad("ca_file", &t.ca_file, &"no certificate in the file"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad("ca_file", &t.ca_file, &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (t.cert_file.is_empty(), t.key_file.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let certs = CertificateDer::pem_file_iter(&t.cert_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad("cert_file", &t.cert_file, &e))?;
            let key = PrivateKeyDer::from_pem_file(&t.key_file)
                .map_err(|e| bad("key_file", &t.key_file, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("cert_file", &t.cert_file, &e))?
        }
        _ => {
            return Err(StoreError::Rejected(
                "cassandra.tls.cert_file and cassandra.tls.key_file go together: set both for \
                 mutual TLS, or neither"
                    .into(),
            ));
        }
    };
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comes_from_the_first_line_of_its_file() {
        let dir = std::env::temp_dir().join(format!("sparkify-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let s = CassandraSettings {
            password_file: file.display().to_string(),
            ..Default::default()
        };
        assert_eq!(password(&s).unwrap(), "s3cret");
        std::fs::remove_file(&file).unwrap();
        let err = password(&s).unwrap_err().to_string();
        assert!(err.contains("cassandra.password_file"), "{err}");
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn tls_settings_are_checked_with_clear_messages() {
        let mut t = TlsSettings {
            enabled: true,
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsSettings::default()
        };
        let err = tls_config(&t).unwrap_err().to_string();
        assert!(
            err.contains("cassandra.tls.ca_file /nonexistent/ca.pem"),
            "{err}"
        );
        t.ca_file = String::new();
        t.cert_file = "client.pem".into();
        if let Err(e) = tls_config(&t) {
            let err = e.to_string();
            assert!(
                err.contains("go together") || err.contains("no system CA"),
                "{err}"
            );
        }
        assert!(tls_config(&TlsSettings::default()).unwrap().is_none());
    }
}
