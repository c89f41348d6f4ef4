//! Blob bodies from an upstream, checked against their digest as they stream.

use bytes::Bytes;
use futures::StreamExt;

use super::root_cause;
use crate::digest::{Digest, Hasher};

/// Streams an upstream blob, hashing it; at its end a wrong length or digest
/// aborts the response instead of ending it.
/// A blob body: chunks, or an error that aborts the transfer.
pub type BlobStream = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

pub(super) fn verified_stream(
    resp: reqwest::Response,
    digest: Digest,
    what: String,
    metrics: crate::metrics::UpstreamMetrics,
) -> BlobStream {
    struct St {
        inner: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        hasher: Option<Hasher>,
    }
    let st = St {
        inner: resp.bytes_stream().boxed(),
        hasher: Some(Hasher::new()),
    };
    let stream = futures::stream::unfold(st, move |mut st| {
        let what = what.clone();
        let metrics = metrics.clone();
        async move {
            let hasher = st.hasher.as_mut()?;
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    metrics.bytes.inc_by(chunk.len() as u64);
                    hasher.update(&chunk);
                    Some((Ok(chunk), st))
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    metrics.error("transfer");
                    tracing::warn!(blob = %what, error = %root_cause(&e), "upstream blob transfer failed");
                    Some((Err(std::io::Error::other("upstream transfer failed")), st))
                }
                None => {
                    let actual = st.hasher.take()?.finish();
                    if actual != digest {
                        metrics.error("digest");
                        tracing::error!(blob = %what, %actual, "upstream blob does not match its digest; response aborted");
                        Some((Err(std::io::Error::other("digest mismatch")), st))
                    } else {
                        None
                    }
                }
            }
        }
    });
    stream.boxed()
}
