//! What a failed driver request means: every error the `scylla` driver can return is sorted into
//! retry (with the cause counted in `sparkify_store_retries_total`), bad credentials, schema
//! mismatch or a permanent refusal, and turned into the [`StoreError`] the rest of sparkify acts on.

use scylla::errors::{
    ConnectionError, ConnectionPoolError, ConnectionSetupRequestErrorKind, DbError, ExecutionError,
    MetadataError, NewSessionError, PagerExecutionError, PrepareError, RequestAttemptError,
};

use crate::store::StoreError;

/// What a failed request means for whoever sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Goes away by itself: retry. The label is the `cause` of `sparkify_store_retries_total`.
    Transient(&'static str),
    /// The cluster refused the credentials, or wants some and got none.
    Auth,
    /// A table or column is missing or of another type.
    Schema,
    /// The request itself is wrong; sending it again cannot help.
    Permanent,
}

/// Messages Cassandra and ScyllaDB give for requests that name what is not there.
fn mentions_missing_schema(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unconfigured table",
        "undefined column",
        "undefined name",
        "unknown identifier",
        "does not exist",
        "keyspace",
        "no column",
        "type error",
    ]
    .iter()
    .any(|p| m.contains(p))
}

fn classify_db(error: &DbError, message: &str) -> Failure {
    match error {
        DbError::Overloaded | DbError::RateLimitReached { .. } => Failure::Transient("overloaded"),
        DbError::WriteTimeout { .. } => Failure::Transient("write_timeout"),
        DbError::ReadTimeout { .. } => Failure::Transient("read_timeout"),
        DbError::Unavailable { .. } | DbError::IsBootstrapping => Failure::Transient("unavailable"),
        // A replica failed the write (disk, a node restarting): losing the rows would be worse
        // than trying again, and an operator sees the retries in the metrics.
        DbError::WriteFailure { .. }
        | DbError::ReadFailure { .. }
        | DbError::ServerError
        | DbError::TruncateError => Failure::Transient("server_error"),
        // The driver re-prepares by itself; seen only when a node restarted mid-request.
        DbError::Unprepared { .. } => Failure::Transient("unprepared"),
        DbError::AuthenticationError => Failure::Auth,
        DbError::Invalid | DbError::ConfigError if mentions_missing_schema(message) => {
            Failure::Schema
        }
        _ => Failure::Permanent,
    }
}

fn classify_attempt(error: &RequestAttemptError) -> Failure {
    match error {
        RequestAttemptError::DbError(e, message) => classify_db(e, message),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

fn classify_connection(error: &ConnectionError) -> Failure {
    match error {
        ConnectionError::ConnectionSetupRequestError(setup) => match &setup.error {
            ConnectionSetupRequestErrorKind::DbError(DbError::AuthenticationError, _)
            | ConnectionSetupRequestErrorKind::MissingAuthentication
            | ConnectionSetupRequestErrorKind::StartAuthSessionError(_)
            | ConnectionSetupRequestErrorKind::AuthChallengeEvaluationError(_)
            | ConnectionSetupRequestErrorKind::AuthFinishError(_) => Failure::Auth,
            ConnectionSetupRequestErrorKind::DbError(e, message) => match classify_db(e, message) {
                Failure::Permanent => Failure::Transient("connection"),
                other => other,
            },
            _ => Failure::Transient("connection"),
        },
        _ => Failure::Transient("connection"),
    }
}

fn classify_pool(error: &ConnectionPoolError) -> Failure {
    match error {
        ConnectionPoolError::Broken {
            last_connection_error,
        } => classify_connection(last_connection_error),
        _ => Failure::Transient("connection"),
    }
}

fn classify_metadata(error: &MetadataError) -> Failure {
    match error {
        MetadataError::ConnectionPoolError(e) => classify_pool(e),
        MetadataError::FetchError(_) => Failure::Transient("metadata"),
        _ => Failure::Permanent,
    }
}

pub(super) fn classify_prepare(error: &PrepareError) -> Failure {
    match error {
        PrepareError::ConnectionPoolError(e) => classify_pool(e),
        PrepareError::AllAttemptsFailed { first_attempt } => classify_attempt(first_attempt),
        _ => Failure::Permanent,
    }
}

pub(super) fn classify(error: &ExecutionError) -> Failure {
    match error {
        ExecutionError::LastAttemptError(e) => classify_attempt(e),
        ExecutionError::ConnectionPoolError(e) => classify_pool(e),
        ExecutionError::RequestTimeout(_) => Failure::Transient("request_timeout"),
        // Every node is down or filtered out right now.
        ExecutionError::EmptyPlan => Failure::Transient("unavailable"),
        ExecutionError::PrepareError(e) => classify_prepare(e),
        ExecutionError::SchemaAgreementError(_) => Failure::Transient("schema_agreement"),
        ExecutionError::MetadataError(e) => classify_metadata(e),
        ExecutionError::UseKeyspaceError(_) => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

pub(super) fn classify_pager(error: &PagerExecutionError) -> Failure {
    match error {
        PagerExecutionError::PrepareError(e) => classify_prepare(e),
        PagerExecutionError::NextPageError(_) => Failure::Transient("connection"),
        PagerExecutionError::SchemaAgreementError(_) => Failure::Transient("schema_agreement"),
        PagerExecutionError::MetadataError(e) => classify_metadata(e),
        _ => Failure::Permanent,
    }
}

pub(super) fn classify_new_session(error: &NewSessionError) -> Failure {
    match error {
        // DNS that does not answer yet (a cluster service still being created) is an outage.
        NewSessionError::FailedToResolveAnyHostname(_) => Failure::Transient("connection"),
        NewSessionError::MetadataError(e) => classify_metadata(e),
        NewSessionError::UseKeyspaceError(_) => Failure::Transient("connection"),
        _ => Failure::Permanent,
    }
}

/// Turns a classified failure into what the rest of sparkify acts on. The driver's messages
/// never contain the password, and neither does anything added here.
pub(super) fn store_error(
    failure: Failure,
    context: &str,
    detail: &dyn std::fmt::Display,
) -> StoreError {
    match failure {
        Failure::Transient(_) => StoreError::Unavailable(format!("{context}: {detail}")),
        Failure::Auth => StoreError::Auth(format!(
            "{context}: the cluster did not accept the credentials (check cassandra.username \
             and cassandra.password or cassandra.password_file): {detail}"
        )),
        Failure::Schema => StoreError::Schema(format!("{context}: {detail}")),
        Failure::Permanent => StoreError::Rejected(format!("{context}: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn server_errors_are_sorted_into_retry_or_fail() {
        use scylla::statement::Consistency;
        let db = |e: DbError, msg: &str| {
            classify(&ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(e, msg.into()),
            ))
        };
        assert_eq!(
            db(DbError::Overloaded, ""),
            Failure::Transient("overloaded")
        );
        assert_eq!(
            db(
                DbError::WriteTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    write_type: scylla::errors::WriteType::Simple,
                },
                ""
            ),
            Failure::Transient("write_timeout")
        );
        assert_eq!(
            db(
                DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                },
                ""
            ),
            Failure::Transient("unavailable")
        );
        assert_eq!(
            classify(&ExecutionError::RequestTimeout(Duration::from_secs(1))),
            Failure::Transient("request_timeout")
        );
        assert_eq!(db(DbError::SyntaxError, "line 1"), Failure::Permanent);
        assert_eq!(
            db(DbError::Unauthorized, "no permission"),
            Failure::Permanent
        );
        assert_eq!(
            db(DbError::Invalid, "Undefined column name length"),
            Failure::Schema
        );
        assert_eq!(
            db(DbError::Invalid, "unconfigured table song_plays_by_session"),
            Failure::Schema
        );
        assert_eq!(
            db(DbError::Invalid, "Invalid null value"),
            Failure::Permanent
        );
        // The emulator cannot ask for credentials, so this mapping is checked here; the whole
        // handshake is checked in tests/cassandra_faults.rs with a proxy that plays the server.
        let auth = db(
            DbError::AuthenticationError,
            "Provided username and/or password are incorrect",
        );
        assert_eq!(auth, Failure::Auth);
        let e = store_error(auth, "cannot connect to n1:9042", &"bad credentials");
        assert!(matches!(e, StoreError::Auth(_)));
        let text = e.to_string();
        assert!(text.starts_with("authentication failed"), "{text}");
        assert!(text.contains("cassandra.username"), "{text}");
    }
}
