//! A whole blob from several upstreams (serving nodes, then the private
//! registry): the first that has it answers; if its transfer breaks, the
//! next is asked for the rest (`Range: bytes=N-`) and the transfer goes
//! on. Every byte is hashed in order across the endpoints, so the blob is
//! checked against its digest end to end (a mismatch, or a length other
//! than announced, aborts the response).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{BlobStream, Upstream, UpstreamError};
use crate::catalog::reference::Reference;
use crate::digest::{Digest, Hasher};

/// A blob answer, not yet checked.
pub(crate) struct RawBlob {
    /// The offset its bytes start at (`None`: a partial answer without a
    /// readable `Content-Range`).
    pub start: Option<u64>,
    pub content_length: Option<u64>,
    pub body: BlobStream,
}

/// The whole blob `digest` from the first of `upstreams` that has it,
/// continued from the next ones if a transfer breaks: `(length, body)`,
/// or `None` if no upstream has it. An error is the last upstream's.
pub async fn blob_with_failover(
    upstreams: Vec<Arc<Upstream>>,
    r: Reference,
    digest: Digest,
) -> Result<Option<(Option<u64>, BlobStream)>, UpstreamError> {
    let mut last_err = None;
    for i in 0..upstreams.len() {
        let up = upstreams[i].clone();
        match up.blob_from(&r, &digest, 0).await {
            Ok(Some(raw)) if raw.start == Some(0) => {
                let size = raw.content_length;
                let state = State {
                    upstreams,
                    next: i + 1,
                    current: up,
                    r,
                    digest,
                    size,
                    offset: 0,
                    hasher: Some(Hasher::new()),
                    body: raw.body,
                };
                return Ok(Some((size, stream(state))));
            }
            Ok(Some(_)) => {
                tracing::warn!(upstream = %up.endpoint(), %digest, "upstream answered a partial blob to a whole-blob request; trying the next");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(upstream = %up.endpoint(), %digest, error = %e, "upstream failed; trying the next");
                up.metrics().error(if e.is_unreachable() {
                    "unreachable"
                } else {
                    "failed"
                });
                last_err = Some(e);
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

struct State {
    upstreams: Vec<Arc<Upstream>>,
    /// The next upstream to continue from.
    next: usize,
    current: Arc<Upstream>,
    r: Reference,
    digest: Digest,
    size: Option<u64>,
    offset: u64,
    /// `None` once the stream ended (or failed).
    hasher: Option<Hasher>,
    body: BlobStream,
}

impl State {
    /// The rest of the blob from the next upstream that serves it.
    async fn resume(&mut self) -> bool {
        while self.next < self.upstreams.len() {
            let up = self.upstreams[self.next].clone();
            self.next += 1;
            match up.blob_from(&self.r, &self.digest, self.offset).await {
                Ok(Some(raw)) if raw.start == Some(self.offset) => {
                    tracing::warn!(digest = %self.digest, offset = self.offset, from = %self.current.endpoint(), to = %up.endpoint(),
                        "blob transfer broke; continuing from the next upstream");
                    self.current = up;
                    self.body = raw.body;
                    return true;
                }
                Ok(Some(_)) => {
                    tracing::warn!(upstream = %up.endpoint(), digest = %self.digest, offset = self.offset,
                        "upstream did not answer the range asked; trying the next");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::info!(upstream = %up.endpoint(), digest = %self.digest, error = %e, "upstream failed; trying the next");
                }
            }
        }
        false
    }
}

fn stream(state: State) -> BlobStream {
    futures::stream::unfold(state, |mut st| async move {
        loop {
            st.hasher.as_ref()?;
            match st.body.next().await {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    st.offset += chunk.len() as u64;
                    if st.size.is_some_and(|s| st.offset > s) {
                        st.hasher = None;
                        tracing::error!(digest = %st.digest, "upstream blob longer than announced; response aborted");
                        return Some((Err(std::io::Error::other("blob longer than announced")), st));
                    }
                    st.hasher.as_mut()?.update(&chunk);
                    return Some((Ok::<Bytes, std::io::Error>(chunk), st));
                }
                Some(Err(e)) => {
                    st.current.metrics().error("transfer");
                    tracing::warn!(digest = %st.digest, upstream = %st.current.endpoint(), offset = st.offset, error = %e,
                        "upstream blob transfer failed");
                    if st.resume().await {
                        continue;
                    }
                    st.hasher = None;
                    return Some((Err(std::io::Error::other("upstream transfer failed")), st));
                }
                None => {
                    if st.size.is_some_and(|s| st.offset < s) {
                        // Ended early without an error: continue as a break.
                        if st.resume().await {
                            continue;
                        }
                        st.hasher = None;
                        return Some((Err(std::io::Error::other("upstream blob cut short")), st));
                    }
                    let actual = st.hasher.take()?.finish();
                    if actual != st.digest {
                        st.current.metrics().error("digest");
                        tracing::error!(digest = %st.digest, %actual, "upstream blob does not match its digest; response aborted");
                        return Some((Err(std::io::Error::other("digest mismatch")), st));
                    }
                    return None;
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;
    use crate::registry::Upstreams;
    use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A registry serving one blob: `cut` ends its whole-blob answers with
    /// a broken connection after that many bytes; ranges are honoured.
    async fn serve_blob(
        blob: Bytes,
        cut: Option<usize>,
    ) -> (String, tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ranges = Arc::new(AtomicUsize::new(0));
        let counted = ranges.clone();
        let router = axum::Router::new().fallback(move |headers: AxHeaders| {
            let blob = blob.clone();
            let counted = counted.clone();
            async move {
                if headers.contains_key("range") {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                let start: usize = headers
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes="))
                    .and_then(|v| v.trim_end_matches('-').parse().ok())
                    .unwrap_or(0);
                let len = blob.len();
                let rest = blob.slice(start..);
                let body = match cut {
                    Some(n) if start == 0 => {
                        let head = rest.slice(..n);
                        // The head goes out first; then the connection breaks.
                        let cut = async {
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            Err::<Bytes, _>(std::io::Error::other("cut"))
                        };
                        axum::body::Body::from_stream(
                            futures::stream::once(async move { Ok(head) })
                                .chain(futures::stream::once(cut)),
                        )
                    }
                    _ => axum::body::Body::from(rest.clone()),
                };
                let mut resp = body.into_response();
                resp.headers_mut()
                    .insert("content-length", (len - start).into());
                if start > 0 {
                    *resp.status_mut() = AxStatus::PARTIAL_CONTENT;
                    resp.headers_mut().insert(
                        "content-range",
                        format!("bytes {start}-{}/{len}", len - 1).parse().unwrap(),
                    );
                }
                resp
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        (format!("http://{addr}"), task, ranges)
    }

    async fn read_all(mut body: BlobStream) -> Result<Vec<u8>, std::io::Error> {
        let mut out = Vec::new();
        while let Some(c) = body.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_broken_transfer_continues_from_the_next_upstream_checked_end_to_end() {
        let blob = Bytes::from(
            (0..300_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        let digest = Digest::of(&blob);
        let (first, t1, _) = serve_blob(blob.clone(), Some(100_000)).await;
        let (second, t2, resumed) = serve_blob(blob.clone(), None).await;
        // A stopped node: nothing listens there.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let r = Reference::parse("docker.io/library/x:1").unwrap();
        let ups = Upstreams::new(&[
            UpstreamConfig::anonymous("*", &dead),
            UpstreamConfig::anonymous("*", &first),
            UpstreamConfig::anonymous("*", &second),
        ])
        .unwrap();
        let (len, body) = blob_with_failover(ups.candidates("docker.io"), r.clone(), digest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(len, Some(blob.len() as u64));
        assert_eq!(read_all(body).await.unwrap(), blob);
        // The second served the rest, from where the first broke off.
        assert_eq!(resumed.load(Ordering::SeqCst), 1);
        // The dead one is now tried after the one that answered.
        let order: Vec<String> = ups
            .candidates("docker.io")
            .iter()
            .map(|u| u.endpoint().to_string())
            .collect();
        let at = |e: &str| order.iter().position(|o| o == e).unwrap();
        assert!(at(&second) < at(&dead), "{order:?}, dead {dead}");

        // Only the cutting upstream: the transfer fails, never ends as good.
        let only = Upstreams::new(&[UpstreamConfig::anonymous("*", &first)]).unwrap();
        let (_, body) = blob_with_failover(only.candidates("docker.io"), r.clone(), digest)
            .await
            .unwrap()
            .unwrap();
        assert!(read_all(body).await.is_err());

        // Wrong bytes across endpoints: the digest check aborts.
        let other = Bytes::from(vec![7u8; 300_000]);
        let (liar, t3, _) = serve_blob(other, None).await;
        let mixed = Upstreams::new(&[
            UpstreamConfig::anonymous("*", &first),
            UpstreamConfig::anonymous("*", &liar),
        ])
        .unwrap();
        let (_, body) = blob_with_failover(mixed.candidates("docker.io"), r, digest)
            .await
            .unwrap()
            .unwrap();
        assert!(read_all(body).await.is_err());
        for t in [t1, t2, t3] {
            t.abort();
        }
    }
}
