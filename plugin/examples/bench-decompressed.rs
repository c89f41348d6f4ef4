//! `bench-decompressed ARCHIVE_DIR STATE_DIR DIGEST...`: for
//! `scripts/bench.sh`. Opens the catalog over ARCHIVE_DIR (reusing the
//! indexes persisted in STATE_DIR, e.g. a daemon's `<root>/catalog`), reads
//! each blob to its end with `Catalog::open_blob` (what the snapshotter's
//! remote path does for every layer), and prints the bytes the archive's
//! container decompressed to do so against the bytes of the blobs:
//! `decompressed=N blobs=M`. The daemon does not export this counter.

use std::io;
use std::path::PathBuf;

use airgap_snapshotter::catalog::{Catalog, CatalogOptions};
use airgap_snapshotter::digest::Digest;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: bench-decompressed ARCHIVE_DIR STATE_DIR DIGEST...".into());
    }
    let catalog = Catalog::open(CatalogOptions {
        dirs: vec![PathBuf::from(&args[0])],
        state_dir: Some(PathBuf::from(&args[1])),
        ..CatalogOptions::default()
    })?;
    let before = catalog.stats().decompressed();
    let mut blobs = 0u64;
    for digest in &args[2..] {
        let digest: Digest = digest
            .parse()
            .map_err(|e| format!("digest {digest}: {e:?}"))?;
        let mut reader = catalog.open_blob(&digest)?;
        blobs += io::copy(&mut reader, &mut io::sink())?;
    }
    let decompressed = catalog.stats().decompressed() - before;
    println!("decompressed={decompressed} blobs={blobs}");
    Ok(())
}
