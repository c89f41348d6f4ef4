//! airgap-snapshotter: a containerd proxy snapshotter and registry mirror that
//! serves images straight from airgap image archives.
//!
//! Layering (docs/architecture.md): archives -> [`catalog`] (index, [`blob`]
//! readers, [`cache`]) -> consumers ([`snapshot`], [`mirror`], [`pack`]);
//! [`registry`] is the client of the site's private registry. The commands
//! that wire these together live in the binary (`src/commands/`).

pub mod blob;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod digest;
pub mod dirs;
pub mod doctor;
pub mod extract;
pub mod health;
pub mod import;
pub mod labels;
pub mod layer;
pub mod metrics;
pub mod mirror;
pub mod pack;
pub mod proto;
pub mod registry;
pub mod setup;
pub mod snapshot;
pub mod systemd;
pub mod trust;
pub mod version;

#[cfg(any(test, feature = "testsupport"))]
pub mod testsupport;
