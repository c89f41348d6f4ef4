//! airgap-snapshotter: a containerd proxy snapshotter and registry mirror that
//! serves images straight from airgap image archives.
//!
//! Layering (see DESIGN.md): archives -> [`catalog`] (index, [`blob`] readers,
//! [`cache`]) -> consumers ([`snapshot`], mirror, CLI).

pub mod blob;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod digest;
pub mod extract;
pub mod labels;
pub mod mirror;
pub mod pack;
pub mod serve;
pub mod setup;
pub mod snapshot;

#[cfg(test)]
pub mod testsupport;
