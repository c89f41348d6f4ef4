//! The zstd seek table parser, and frame lookups over what it accepts.
#![no_main]
use std::io::Write;

use airgap_snapshotter::catalog::seekable::SeekTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(data).unwrap();
    if let Ok(t) = SeekTable::read(&f, data.len() as u64) {
        let len = t.decompressed_len();
        for off in [0, len / 2, len.saturating_sub(1), len] {
            let _ = t.frame_at(off);
        }
    }
    let _ = SeekTable::from_entries(data, 8);
});
