//! Manifest, index and config parsing: the input is `index.json`, and also a
//! blob the index may point to.
#![no_main]
use std::io::Write;

use airgap_snapshotter::catalog::index::{index_archive, FileKey};
use airgap_snapshotter::digest::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, path, bytes).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&format!("blobs/sha256/{}", Digest::of(data).hex()), data);
    add("index.json", data);
    let tar = b.into_inner().unwrap();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&tar).unwrap();
    let key = FileKey::of(&f.as_file().metadata().unwrap());
    let _ = index_archive(f.path(), f.as_file(), key);
});
