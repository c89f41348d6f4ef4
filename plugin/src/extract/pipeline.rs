//! The pipeline every layer goes through, extracted or indexed:
//! decompression, hashing (the diffID) and the tar walk on three threads that
//! pass the same 1 MiB buffers along.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, SyncSender};

use crate::catalog::Compression;
use crate::digest::{Digest, Hasher};

use super::tar::{Entry, TarStream};
use super::ExtractError;

/// A piece of the decompressed stream: `buf[..len]` is data.
pub(crate) struct Chunk {
    pub buf: Vec<u8>,
    pub len: usize,
}

/// What the decompression side sends: chunks in order, an error, or (by
/// closing the channel) the end of the stream.
pub(crate) type ChunkMsg = io::Result<Chunk>;

/// Size of the chunks the decompressor fills: large writes for big files,
/// few channel hand-offs.
pub(crate) const CHUNK_SIZE: usize = 1024 * 1024;

/// Reads `inner` to its end in chunks and sends them; buffers come back
/// through `pool`. Returns when the stream ended, failed (the error is sent
/// on), or the receiving side went away.
pub(crate) fn produce_chunks(
    mut inner: impl Read,
    tx: &SyncSender<ChunkMsg>,
    pool: &Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = pool.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK_SIZE]);
        let mut len = 0;
        let mut eof = false;
        while len < buf.len() {
            match inner.read(&mut buf[len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                // A reader claiming more than it was given is broken; do not trust it.
                Ok(n) => len = (len + n).min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if len > 0 && tx.send(Ok(Chunk { buf, len })).is_err() {
            return;
        }
        if eof {
            return;
        }
    }
}

/// Hashes the chunks passing from `rx` to `tx`; returns the digest and the
/// length of everything that passed (the whole stream, if it ended well).
pub(crate) fn hash_chunks(rx: Receiver<ChunkMsg>, tx: SyncSender<ChunkMsg>) -> (Digest, u64) {
    let mut hasher = Hasher::new();
    let mut total = 0u64;
    for msg in rx {
        if let Ok(chunk) = &msg {
            hasher.update(&chunk.buf[..chunk.len]);
            total += chunk.len as u64;
        }
        if tx.send(msg).is_err() {
            break;
        }
    }
    (hasher.finish(), total)
}

/// What [`walk_layer`] measured of the stream it walked.
pub(crate) struct Walked<T> {
    /// What the walk returned.
    pub value: T,
    /// SHA-256 of the decompressed stream, to compare with the diffID.
    pub diff_id: Digest,
    pub decompressed_bytes: u64,
    pub compressed_bytes: u64,
}

/// Decompresses `blob` and hashes the tar stream on two threads of their
/// own, while `walk` reads its entries on the calling thread (the one tar
/// parser, shared by extraction and the EROFS index). `walk` must read the
/// stream to its end ([`TarStream::finish`]) for the digest to cover it all;
/// when it returns early, the other threads stop.
pub(crate) fn walk_layer<T, E: From<ExtractError>>(
    blob: impl Read + Send,
    compression: Compression,
    walk: impl FnOnce(TarStream) -> Result<T, E>,
) -> Result<Walked<T>, E> {
    // Decompression, hashing and the walk overlap on three threads (see
    // [`tar`]); at most 2 * QUEUE + 3 chunk buffers exist at once.
    const QUEUE: usize = 3;
    let (dec_tx, hash_rx) = mpsc::sync_channel::<ChunkMsg>(QUEUE);
    let (hash_tx, tar_rx) = mpsc::sync_channel::<ChunkMsg>(QUEUE);
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let spawn_err = |source| ExtractError::Stream {
            entry: String::new(),
            source,
        };
        let decoder = std::thread::Builder::new()
            .name("extract-inflate".into())
            .spawn_scoped(s, move || decompress(blob, compression, &dec_tx, &pool_rx))
            .map_err(spawn_err)?;
        let hasher = std::thread::Builder::new()
            .name("extract-hash".into())
            .spawn_scoped(s, move || hash_chunks(hash_rx, hash_tx))
            .map_err(spawn_err)?;
        // `walk` drops the stream when it returns, which stops the other
        // threads if it returns early.
        let ran = walk(TarStream::new(tar_rx, pool_tx));
        let hashed = hasher.join();
        let compressed = decoder.join();
        let value = ran?;
        let (diff_id, total) = hashed.map_err(|_| thread_panicked("hashing"))?;
        let compressed = compressed.map_err(|_| thread_panicked("decompression"))?;
        Ok(Walked {
            value,
            diff_id,
            decompressed_bytes: total,
            compressed_bytes: compressed,
        })
    })
}

fn thread_panicked(what: &str) -> ExtractError {
    ExtractError::Stream {
        entry: String::new(),
        source: io::Error::other(format!("the {what} thread panicked")),
    }
}

/// The decompression stage: sends the decompressed stream as chunks; returns
/// the compressed bytes read.
fn decompress(
    blob: impl Read,
    compression: Compression,
    tx: &SyncSender<ChunkMsg>,
    pool: &Receiver<Vec<u8>>,
) -> u64 {
    const IN_BUF: usize = 256 * 1024;
    let counted = Rc::new(Cell::new(0u64));
    let blob = CountingReader {
        inner: blob,
        count: counted.clone(),
    };
    match compression {
        Compression::None => produce_chunks(blob, tx, pool),
        Compression::Gzip => produce_chunks(
            flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(IN_BUF, blob)),
            tx,
            pool,
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(IN_BUF, blob))
                    .and_then(|mut d| d.window_log_max(31).map(|()| d));
            match decoder {
                Ok(d) => produce_chunks(d, tx, pool),
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
    counted.get()
}

struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// The one tar walk of a layer, shared by extraction and the EROFS index
/// builder: `f` gets every entry in order (with the stream, positioned at
/// the entry's data, and the entry's path as shown in errors), then the
/// stream is read to its end so that the diffID covers every byte.
pub(crate) fn walk_entries(
    mut stream: TarStream,
    mut f: impl FnMut(&mut TarStream, &Entry, &str) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let mut last = String::new();
    loop {
        let entry = match stream.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => return Err(ExtractError::stream(&last, e)),
        };
        last = entry.display_path();
        f(&mut stream, &entry, &last)?;
    }
    stream.finish().map_err(|e| ExtractError::stream(&last, e))
}
