//! EROFS tar indexes: any tar stream, never a panic; what is written is
//! either nothing (an error) or an image no larger than the metadata can
//! make it. Runs unprivileged (nothing is mounted).
#![no_main]
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use airgap_snapshotter::catalog::Compression;
use airgap_snapshotter::digest::Digest;
use airgap_snapshotter::layer::index::{build_index, Backing};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("airgap-erofs-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        base
    })
}

fuzz_target!(|data: &[u8]| {
    let out = base().join("layer.erofs");
    let _ = fs::remove_file(&out);
    let backing = Backing {
        data_base: 0,
        backing_len: data.len() as u64,
    };
    match build_index(data, Compression::None, &Digest::of(data), backing, &out) {
        Ok(stats) => {
            let len = fs::metadata(&out).unwrap().len();
            assert_eq!(len, stats.image.bytes);
        }
        Err(_) => assert!(!out.exists(), "an image was left after an error"),
    }
});
