//! airgap-snapshotter: a containerd proxy snapshotter and registry mirror that
//! serves images straight from airgap image archives.
//!
//! Layering (see DESIGN.md): archives -> [`catalog`] (index, [`blob`] readers,
//! [`cache`]) -> consumers ([`snapshot`], mirror, CLI).

pub mod digest;
pub mod labels;
pub mod catalog;
