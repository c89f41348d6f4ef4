//! What `airgap-snapshotter --version` prints: the crate version, the git
//! commit it was built from and the target triple, recorded by `build.rs`.

/// The git commit the binary was built from (short hash), `$AIRGAP_COMMIT`
/// when built outside a repository, else `unknown`.
pub const COMMIT: &str = env!("AIRGAP_BUILD_COMMIT");

/// The target triple the binary was built for, e.g. `aarch64-unknown-linux-musl`.
pub const TARGET: &str = env!("AIRGAP_BUILD_TARGET");

/// `0.1.0 (abc1234, x86_64-unknown-linux-musl)`: clap prints it after the
/// binary's name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("AIRGAP_BUILD_COMMIT"),
    ", ",
    env!("AIRGAP_BUILD_TARGET"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_crate_version_commit_and_target() {
        assert_eq!(
            VERSION,
            format!("{} ({COMMIT}, {TARGET})", env!("CARGO_PKG_VERSION"))
        );
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        // One word, so that scripts can cut the line at spaces and parentheses.
        assert!(!COMMIT.is_empty());
        assert!(!COMMIT.contains([' ', '(', ')', ',']), "{COMMIT}");
    }

    #[test]
    fn target_is_the_one_this_code_runs_on() {
        // The triple starts with the architecture (x86_64-, aarch64-) and
        // names the OS; under qemu-aarch64 this checks the arm64 build.
        assert!(
            TARGET.starts_with(&format!("{}-", std::env::consts::ARCH)),
            "{TARGET} vs {}",
            std::env::consts::ARCH
        );
        assert!(TARGET.contains(std::env::consts::OS), "{TARGET}");
        if cfg!(target_env = "musl") {
            assert!(TARGET.ends_with("-musl"), "{TARGET}");
        }
    }
}
