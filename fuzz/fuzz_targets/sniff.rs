//! Container sniffing and decoding: any bytes, never a panic or a hang.
#![no_main]
use std::io::{Read, Write};

use airgap_snapshotter::catalog::container;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(data).unwrap();
    if let Ok((c, _)) = container::sniff(&f, data.len() as u64) {
        if let Ok(d) = container::decoder(f, c) {
            // Bounded: a small input can claim a huge output.
            let _ = d.take(1 << 20).read_to_end(&mut Vec::new());
        }
    }
});
