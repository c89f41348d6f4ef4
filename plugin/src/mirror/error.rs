//! The mirror's errors and the one place they become HTTP answers, with the
//! OCI distribution error body (`{"errors":[{"code","message"}]}`).
//!
//! A miss is a 4xx, so containerd moves on to the next host of `hosts.toml`.
//! Internal failures are logged with their detail and answered 500 with a
//! generic message: no archive path or upstream credential reaches a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    BlobUnknown(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    Unsupported(String),
    /// An archived image refused by `[verify] require = "enforce"` (the
    /// message names the image, the archive's file name and the reason).
    #[error("{0}")]
    Denied(String),
    /// A pagination `n` that is not a count.
    #[error("{0}")]
    PaginationNumberInvalid(String),
    /// A `Range` outside the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// The upstream registry failed (down, timeout, refused our credentials,
    /// sent bad bytes); the detail has been logged.
    #[error("upstream registry: {0}")]
    Upstream(String),
    /// Anything else; the detail is logged, never answered.
    #[error("{0}")]
    Internal(String),
}

impl MirrorError {
    pub fn internal(what: &str, err: impl std::fmt::Display) -> Self {
        MirrorError::Internal(format!("{what}: {err}"))
    }

    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            MirrorError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            MirrorError::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            MirrorError::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            MirrorError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            MirrorError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            MirrorError::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            MirrorError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            MirrorError::PaginationNumberInvalid(_) => {
                (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID")
            }
            MirrorError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN")
            }
            MirrorError::Upstream(_) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            MirrorError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }
}

/// A name that is no image reference.
impl From<crate::catalog::reference::ReferenceError> for MirrorError {
    fn from(e: crate::catalog::reference::ReferenceError) -> Self {
        MirrorError::NameInvalid(e.to_string())
    }
}

impl IntoResponse for MirrorError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = match &self {
            MirrorError::Internal(detail) => {
                tracing::error!(error = %detail, "mirror: internal error");
                "internal error (see the daemon's log)".to_string()
            }
            MirrorError::Upstream(_) => {
                "the upstream registry failed (see the daemon's log)".to_string()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let MirrorError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}
