//! `bench-cri ADDRESS IMAGE...`: plays kubelet for `scripts/demo.sh`. Sends
//! a CRI `PullImage` for each image, in order, to the containerd at the
//! socket ADDRESS, and prints one line per image: the wall seconds the call
//! took (PullImage returns once the image is unpacked, i.e. can run) and the
//! image id containerd answered. Not a test: it asserts nothing about time.

use std::path::Path;
use std::time::Instant;

use airgap_integration::CriClient;
use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((address, images)) = args.split_first() else {
        bail!("usage: bench-cri CONTAINERD_SOCKET IMAGE...");
    };
    if images.is_empty() {
        bail!("usage: bench-cri CONTAINERD_SOCKET IMAGE...");
    }
    let mut client = CriClient::connect(Path::new(address))?;
    for image in images {
        let started = Instant::now();
        let id = client.pull_image(image)?;
        println!("{:.3} {id}", started.elapsed().as_secs_f64());
    }
    Ok(())
}
