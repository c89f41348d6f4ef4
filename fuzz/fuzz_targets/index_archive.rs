//! The whole indexing pass (sniffing, tar walking, layout resolution) over
//! arbitrary archive bytes.
#![no_main]
use std::io::Write;

use airgap_snapshotter::catalog::index::{index_archive, FileKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    let key = FileKey::of(&f.as_file().metadata().unwrap());
    let _ = index_archive(f.path(), f.as_file(), key);
});
