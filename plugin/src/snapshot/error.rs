//! The snapshotter's errors, and the one place they become gRPC statuses.

use std::path::PathBuf;

/// Everything a snapshotter operation can fail with. The variants that name a
/// gRPC code are the API containerd programs against (its `errdefs`); every
/// other variant is internal and reaches the client as `INTERNAL`, never as
/// `NOT_FOUND` or `ALREADY_EXISTS`.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot (or its parent) does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The key or name is taken (or, on the remote path, the target exists).
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request itself is wrong (bad filter, immutable field, bad kind).
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// The snapshot is not in the state the operation needs.
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// A file operation of the snapshotter itself failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(#[source] Box<redb::Error>),
    /// A record in the metadata store could not be decoded.
    #[error("metadata record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// Layer mounts were asked for (`layer_mounts = "erofs"`) and the
    /// kernel cannot do them.
    #[error("layer mounts: {0}")]
    LayerBacking(#[from] crate::layer::LayerError),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<crate::dirs::DirError> for SnapshotError {
    fn from(e: crate::dirs::DirError) -> Self {
        SnapshotError::io(e.what, e.path, e.source)
    }
}

impl SnapshotError {
    /// An [`SnapshotError::Io`] with what was being done and to which path.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SnapshotError::NotFound(_))
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, SnapshotError::AlreadyExists(_))
    }
}

macro_rules! store_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for SnapshotError {
            fn from(err: $ty) -> Self {
                SnapshotError::Store(Box::new(err.into()))
            }
        }
    )*};
}
store_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// containerd's `errdefs.ToGRPC` table. The status message keeps containerd's
/// habit of ending in the error class, which `errdefs.FromGRPC` strips again.
impl From<SnapshotError> for tonic::Status {
    fn from(err: SnapshotError) -> Self {
        let message = err.to_string();
        match err {
            SnapshotError::NotFound(_) => tonic::Status::not_found(message),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(message),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            SnapshotError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            SnapshotError::Io { .. }
            | SnapshotError::Store(_)
            | SnapshotError::Corrupt { .. }
            | SnapshotError::LayerBacking(_)
            | SnapshotError::Task(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn internal_file_errors_never_look_like_api_errors() {
        for kind in [
            std::io::ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists,
        ] {
            let err = SnapshotError::io("create", "/x", std::io::Error::from(kind));
            assert_eq!(tonic::Status::from(err).code(), Code::Internal);
        }
    }

    #[test]
    fn api_errors_keep_their_codes() {
        let cases = [
            (SnapshotError::NotFound("a".into()), Code::NotFound),
            (
                SnapshotError::AlreadyExists("a".into()),
                Code::AlreadyExists,
            ),
            (
                SnapshotError::InvalidArgument("a".into()),
                Code::InvalidArgument,
            ),
            (
                SnapshotError::FailedPrecondition("a".into()),
                Code::FailedPrecondition,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(tonic::Status::from(err).code(), code);
        }
    }
}
