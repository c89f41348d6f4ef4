//! Test helpers: an in-memory [`LayerSource`] and an in-process server.
