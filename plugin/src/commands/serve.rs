//! `airgap-snapshotter serve`: the daemon. Loads the configuration, opens the
//! snapshotter, serves containerd's snapshots API on a unix socket, the
//! registry mirror and the Prometheus metrics on their TCP addresses until
//! SIGTERM or SIGINT. Under systemd (`Type=notify`) it reports `READY=1`
//! once every socket is bound and `STOPPING=1` when it starts shutting down,
//! and with `WatchdogSec=` keeps the watchdog fed (`WATCHDOG=1`) from the
//! start. The metrics listener also answers `/healthz` and `/readyz`
//! (`health`).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use airgap_snapshotter::catalog::{Catalog, CatalogOptions, LayerSource};
use airgap_snapshotter::config::{
    Config, ConfigSource, DefaultFiles, LayerMode, Listen, ServeArgs,
};
use airgap_snapshotter::health::{ContainerdState, Disk, Health};
use airgap_snapshotter::import::{ImportMode, ImportOptions, Importer};
use airgap_snapshotter::mirror::cluster::ClusterListener;
use airgap_snapshotter::mirror::Mirror;
use airgap_snapshotter::registry::Upstreams;
use airgap_snapshotter::snapshot::service::SnapshotService;
use airgap_snapshotter::snapshot::{blocking, LayerOptions, Snapshotter};
use airgap_snapshotter::systemd;
use airgap_snapshotter::trust::{Require, Trust, TrustedLayers, Use};

/// Runs the daemon; returns when it was asked to stop.
pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let source = ConfigSource::find(args.config.as_deref(), &DefaultFiles::system());
    let config = Config::load_from(&args, &source)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("airgap-snapshotter")
        .build()
        .context("start the async runtime")?;
    let result = runtime.block_on(serve(config, source, shutdown_signal()));
    // Blocking work still running (an extraction into staging, emptied at
    // the next start) must not hold the exit up.
    runtime.shutdown_timeout(RUNTIME_DRAIN);
    result
}

/// How long blocking work may run on once the servers stopped.
const RUNTIME_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the snapshots API waits for calls in flight after the stop
/// signal (a Prepare waiting for a large extraction) before they are cut off.
const GRPC_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `config`, read from `source`, until `shutdown` resolves (a
/// signal, in the daemon).
async fn serve(
    mut config: Config,
    source: ConfigSource,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<ExitCode> {
    // The first line: the version, the config file read (or none, and the
    // paths looked at) and the effective settings (upstreams by registry
    // and endpoint only, never their credentials).
    let upstreams: Vec<String> = config
        .upstream
        .iter()
        .map(|u| format!("{}={}", u.registry, u.endpoint))
        .collect();
    tracing::info!(
        version = airgap_snapshotter::version::VERSION,
        config_file = %source,
        root = %config.root.display(),
        socket = %config.socket.display(),
        archives = ?config.archives,
        mirror_listen = %config.mirror_listen,
        metrics_listen = %config.metrics_listen,
        cache_bytes = config.cache_bytes,
        layer_mounts = ?config.layer_mounts,
        prepare_layers = ?config.prepare_layers,
        layer_backing = ?config.layer_backing,
        layer_store_bytes = config.layer_store_bytes,
        archive_removal_grace = ?config.archive_removal_grace,
        containerd_address = %config.containerd_address.display(),
        import_mode = ?config.import.mode,
        import_namespaces = ?config.import.namespaces,
        upstreams = ?upstreams,
        verify_require = config.verify.require.as_str(),
        verify_keys = config.verify.keys.len(),
        cluster_listeners = ?config.cluster_listener.iter().map(|l| l.listen.to_string()).collect::<Vec<_>>(),
        "starting"
    );
    source.warn_if_old();
    // From the start: opening a large state may take a while, and systemd
    // counts from the process's start.
    if let Some(every) = systemd::watchdog_interval() {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "feeding the systemd watchdog"
        );
        tokio::spawn(feed_watchdog(every));
    }

    // Before anything touches the root: a second daemon on the same root
    // must not empty the first one's cache, staging or trash.
    let _root_lock = lock_root(&config.root)?;
    // Every path under the root as the kernel spells it (mountinfo): a root
    // reached through a symlink must not leave mounts behind.
    config.root = fs::canonicalize(&config.root)
        .with_context(|| format!("resolve root {}", config.root.display()))?;
    airgap_snapshotter::layer::rewrites::init(&config.root);

    let catalog_options = CatalogOptions {
        dirs: config.archives.clone(),
        state_dir: Some(config.root.join("catalog")),
        cache_dir: Some(config.root.join("cache")),
        cache_bytes: config.cache_bytes,
        removal_grace: config.archive_removal_grace,
        on_rewrite: Some(airgap_snapshotter::layer::rewrites::seen),
        ..Default::default()
    };
    let catalog = tokio::task::spawn_blocking(move || Catalog::empty(catalog_options))
        .await
        .context("open the archive catalog")??;
    // The watcher's first scan indexes the archives (or loads their persisted
    // indexes) while the sockets already answer; lookups wait for that scan.
    // It watches the directories until `serve` returns.
    let _watch = catalog.watch();
    let upstreams = Upstreams::new(&config.upstream).context("set up the upstream registries")?;
    let trust = Trust::from_config(&config.verify)?;
    let mirror = Mirror::with_trust(catalog.clone(), upstreams, trust.clone());
    // The cluster listeners' files are read now: a listener whose
    // certificate, key or credentials do not load stops the start.
    let cluster_listeners = config
        .cluster_listener
        .iter()
        .map(ClusterListener::new)
        .collect::<Result<Vec<_>, _>>()?;
    // Readiness: the first scan done, and containerd answering the importer
    // when registration is on.
    let containerd_state = (config.import.mode != ImportMode::Off)
        .then(|| ContainerdState::new(config.containerd_address.clone()));
    let mut health = Health::new(catalog.clone()).with_disk(Disk {
        root: config.root.clone(),
        cache_budget: config.cache_bytes,
        layer_store_budget: config.layer_store_bytes,
    });
    if let Some(state) = &containerd_state {
        health = health.with_containerd(state.clone());
    }
    let import_catalog = catalog.clone();
    let stop_catalog = catalog.clone();
    let prepare_catalog = catalog.clone();
    let survey_catalog = catalog.clone();
    let source: Option<Arc<dyn LayerSource>> = Some(match trust.require() {
        Require::Off => catalog,
        _ => Arc::new(TrustedLayers::new(catalog, trust.clone())),
    });

    let root = config.root.clone();
    let layer_options = LayerOptions::from_config(&config);
    let snapshotter = blocking(move || Snapshotter::open_with(&root, source, layer_options))
        .await
        .with_context(|| format!("open snapshotter state in {}", config.root.display()))?;

    let mirror_listener = match config.mirror_listen {
        Listen::Off => None,
        Listen::Addr(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the registry mirror to {addr} (mirror_listen)"))?,
        ),
    };
    let mut cluster_bound = Vec::new();
    for l in cluster_listeners {
        let bound = l.bind().await?;
        cluster_bound.push((l, bound));
    }
    let metrics_listener = match config.metrics_listen {
        Listen::Off => None,
        Listen::Addr(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the metrics listener to {addr} (metrics_listen)"))?,
        ),
    };
    let listener = bind_socket(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), "serving containerd snapshots API");

    // One signal stops both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            tell_systemd(systemd::STOPPING);
            // First: indexing in progress gives up, lookups waiting for the
            // first scan return, so the servers below can drain.
            stop_catalog.shutdown();
            let _ = stop_tx.send(true);
        }
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let cluster_tasks: Vec<_> = cluster_bound
        .into_iter()
        .map(|(l, bound)| {
            let addr = bound.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(listen = %addr, "serving the archives to the cluster (cluster_listener)");
            let shutdown = stopped(stop_rx.clone());
            let mirror = mirror.clone();
            tokio::spawn(async move { l.serve(mirror, bound, shutdown).await })
        })
        .collect();
    let mirror_task = mirror_listener.map(|l| {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, upstreams = config.upstream.len(), "serving the registry mirror");
        let shutdown = stopped(stop_rx.clone());
        tokio::spawn(async move { mirror.serve(l, shutdown).await })
    });
    let metrics_task = metrics_listener.map(|l| {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %addr, "serving Prometheus metrics on /metrics, /healthz and /readyz");
        let shutdown = stopped(stop_rx.clone());
        tokio::spawn(airgap_snapshotter::metrics::serve(health, l, shutdown))
    });

    let import_stop = stop_rx.clone();
    if !trust.keys().is_empty() {
        tokio::spawn(survey_signatures(
            survey_catalog,
            trust.clone(),
            stop_rx.clone(),
        ));
    }
    let prepare_task = (config.layer_mounts != LayerMode::Extract).then(|| {
        tokio::spawn(prepare_on_arrival(
            prepare_catalog,
            trust.clone(),
            snapshotter.clone(),
            stop_rx.clone(),
        ))
    });
    let server = tonic::transport::Server::builder()
        .add_service(SnapshotService::new(snapshotter).into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped(stop_rx.clone()));
    // Every socket is bound (connections queue until the servers accept
    // them): containerd, ordered after this unit, may start.
    tell_systemd(systemd::READY);
    // Registration waits for containerd, which waits for this daemon.
    let import_task = (config.import.mode != ImportMode::Off).then(|| {
        let mut importer = Importer::new(import_catalog, ImportOptions::from_config(&config))
            .with_trust(trust.clone());
        if let Some(state) = containerd_state {
            importer = importer.with_containerd_state(state);
        }
        tokio::spawn(importer.run(import_stop))
    });
    let mut server = tokio::spawn(server);
    let result = tokio::select! {
        result = &mut server => result.context("the snapshots API task")?,
        () = async {
            stopped(stop_rx).await;
            tokio::time::sleep(GRPC_DRAIN).await;
        } => {
            tracing::warn!("snapshots API calls still running at shutdown; cut off");
            server.abort();
            Ok(())
        }
    };
    if let Err(err) = fs::remove_file(&config.socket) {
        tracing::warn!(socket = %config.socket.display(), error = %err, "could not remove socket");
    }
    // Also when the snapshots server failed: stop the mirror, giving
    // transfers in flight a moment to finish.
    let _ = stop_tx.send(true);
    if let Some(mut task) = mirror_task {
        match tokio::time::timeout(MIRROR_DRAIN, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "registry mirror failed"),
            Ok(Err(err)) => tracing::error!(error = %err, "registry mirror task failed"),
            Err(_) => {
                tracing::warn!("registry mirror transfers still running at shutdown; cut off");
                task.abort();
            }
        }
    }
    for mut task in cluster_tasks {
        match tokio::time::timeout(MIRROR_DRAIN, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "cluster listener failed"),
            Ok(Err(err)) => tracing::error!(error = %err, "cluster listener task failed"),
            Err(_) => {
                tracing::warn!("cluster transfers still running at shutdown; cut off");
                task.abort();
            }
        }
    }
    if let Some(task) = import_task {
        // Between calls it stops at once; a call in flight has its timeout.
        if tokio::time::timeout(std::time::Duration::from_secs(2), task)
            .await
            .is_err()
        {
            tracing::debug!("registration still running at shutdown; cut off");
        }
    }
    if let Some(task) = prepare_task {
        // A layer being prepared is left half-built (removed at the next
        // start); the runtime's drain does not wait for it.
        task.abort();
    }
    if let Some(task) = metrics_task {
        match tokio::time::timeout(std::time::Duration::from_secs(1), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::error!(error = %err, "metrics listener failed"),
            Ok(Err(err)) => tracing::error!(error = %err, "metrics task failed"),
            Err(_) => tracing::debug!("metrics scrape still running at shutdown; cut off"),
        }
    }
    result.context("serve the snapshots API")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prepares archived layers for mounting as their archives arrive (see
/// `snapshot::layer_store`): after the first scan and after every change
/// of the archives, until `stop`.
async fn prepare_on_arrival(
    catalog: Arc<Catalog>,
    trust: Arc<Trust>,
    snapshotter: Arc<Snapshotter>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = catalog.subscribe();
    loop {
        if catalog.first_scan_done() && !catalog.stopping() {
            let catalog = catalog.clone();
            let snapshotter = snapshotter.clone();
            let trust = trust.clone();
            let pass = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mut layers = catalog.layers_for(&airgap_snapshotter::setup::platform());
                layers.retain(|l| trust.admit_layer(&catalog, l, Use::PrepareAhead).is_ok());
                let prepared = snapshotter.prepare_ahead(&layers, &|| catalog.stopping());
                (layers.len(), prepared, started.elapsed())
            });
            match pass.await {
                Ok((_, 0, _)) => {}
                Ok((layers, prepared, elapsed)) => tracing::info!(
                    layers,
                    prepared,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "archived layers prepared for mounting ahead of any pull"
                ),
                Err(err) => tracing::error!(error = %err, "preparing layers ahead failed"),
            }
        }
        // Also now and then: entries of deleted archives are dropped once
        // their snapshots are gone.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(std::time::Duration::from_secs(300)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Checks the signatures of the archived images ([verify] keys) after the
/// first scan and after every change of the archives, until `stop`: sets
/// `airgap_images_signature` and logs each image without a valid one once.
async fn survey_signatures(
    catalog: Arc<Catalog>,
    trust: Arc<Trust>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = catalog.subscribe();
    let mut logged = std::collections::HashSet::new();
    loop {
        let (c, t) = (catalog.clone(), trust.clone());
        if let Ok(survey) = tokio::task::spawn_blocking(move || t.survey(&c)).await {
            for (image, verdict) in survey {
                if verdict.state() != "valid"
                    && logged.insert((image.entry.name.clone(), image.entry.digest))
                {
                    tracing::warn!(image = %image.entry.name, archive = %image.archive.display(),
                        reason = %verdict, require = trust.require().as_str(), "archived image without a valid signature");
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Sends `WATCHDOG=1` every `every` (half of systemd's `WatchdogSec`) for
/// as long as the runtime runs its tasks: a runtime that stopped answering
/// gets the daemon restarted.
async fn feed_watchdog(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        tell_systemd(systemd::WATCHDOG);
    }
}

/// Tells systemd `state`, logging a failure (never fatal).
fn tell_systemd(state: &str) {
    match systemd::notify(state) {
        Ok(true) => tracing::debug!(state, "told systemd"),
        Ok(false) => {}
        Err(err) => tracing::warn!(state, error = %err, "cannot tell systemd"),
    }
}

/// How long blob transfers in flight may run on after the stop signal.
const MIRROR_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the unix socket: its directory is created 0700 if missing, a stale
/// socket (nobody listening) is replaced, the socket is made 0600.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("create socket directory {}", dir.display()))?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another process is listening on {}; is the daemon already running?",
                    path.display()
                );
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            fs::remove_file(path)
                .with_context(|| format!("remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("stat {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("set mode of {}", path.display()))?;
    Ok(listener)
}

/// Takes the root's lock (an `flock` on `<root>/lock`, held until the
/// process exits) or fails with one line naming the root.
fn lock_root(root: &Path) -> Result<fs::File> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("create root {}", root.display()))?;
    let path = root.join("lock");
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!(
            "another airgap-snapshotter is serving {} (it holds {})",
            root.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("lock {}", path.display())),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that set systemd's variables (process-wide) take turns
    /// when `cargo test` runs them as threads of one process.
    static SYSTEMD_ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/sub/s.sock");
        let l = bind_socket(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        // Someone listening: refuse.
        assert!(bind_socket(&path).is_err());
        drop(l);
        // Stale: replaced.
        let _l = bind_socket(&path).unwrap();
        // Not a socket: refuse, and leave it alone.
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(bind_socket(&file).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"x");
    }

    /// With `NOTIFY_SOCKET` set, `READY=1` arrives once the snapshots
    /// socket answers, and `STOPPING=1` when the daemon is asked to stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tells_systemd_ready_then_stopping() {
        let _env = SYSTEMD_ENV.lock().await;
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify");
        let listener = UnixDatagram::bind(&notify).unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // Safe here: nextest runs each test in its own process.
        std::env::set_var("NOTIFY_SOCKET", &notify);
        let config = Config {
            root: dir.path().join("root"),
            socket: dir.path().join("run/snapshotter.sock"),
            archives: vec![dir.path().join("archives")],
            mirror_listen: Listen::Off,
            metrics_listen: Listen::Off,
            // Never the machine's containerd.
            import: airgap_snapshotter::config::ImportConfig {
                mode: ImportMode::Off,
                ..Default::default()
            },
            ..Config::default()
        };
        let socket = config.socket.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(serve(
            config,
            ConfigSource::Explicit("test.toml".into()),
            async {
                let _ = stopped.await;
            },
        ));
        let recv = |listener: UnixDatagram| {
            tokio::task::spawn_blocking(move || loop {
                // The watchdog's keep-alives, if a test sets one, aside.
                let mut buf = [0u8; 64];
                let n = listener.recv(&mut buf).expect("a notification");
                let state = String::from_utf8_lossy(&buf[..n]).into_owned();
                if state != systemd::WATCHDOG {
                    return (state, listener);
                }
            })
        };
        let (state, listener) = recv(listener).await.unwrap();
        assert_eq!(state, "READY=1");
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            "READY=1 before the socket answers"
        );
        stop.send(()).unwrap();
        let (state, _) = recv(listener).await.unwrap();
        assert_eq!(state, "STOPPING=1");
        assert_eq!(daemon.await.unwrap().unwrap(), ExitCode::SUCCESS);
    }

    /// With `WATCHDOG_USEC` set (systemd's `WatchdogSec=`), `WATCHDOG=1`
    /// arrives at half that interval while the daemon runs, and readiness
    /// is reported as without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feeds_the_systemd_watchdog() {
        let _env = SYSTEMD_ENV.lock().await;
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify");
        let listener = UnixDatagram::bind(&notify).unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        // Safe here: nextest runs each test in its own process.
        std::env::set_var("NOTIFY_SOCKET", &notify);
        std::env::set_var("WATCHDOG_USEC", "200000");
        std::env::remove_var("WATCHDOG_PID");
        let config = Config {
            root: dir.path().join("root"),
            socket: dir.path().join("run/snapshotter.sock"),
            archives: vec![dir.path().join("archives")],
            mirror_listen: Listen::Off,
            metrics_listen: Listen::Off,
            import: airgap_snapshotter::config::ImportConfig {
                mode: ImportMode::Off,
                ..Default::default()
            },
            ..Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(serve(
            config,
            ConfigSource::Explicit("test.toml".into()),
            async {
                let _ = stopped.await;
            },
        ));
        let seen = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let (mut ready, mut fed) = (false, 0);
            while !(ready && fed >= 3) {
                let mut buf = [0u8; 64];
                let n = listener.recv(&mut buf).expect("a notification");
                match &buf[..n] {
                    b"READY=1" => ready = true,
                    b"WATCHDOG=1" => fed += 1,
                    other => panic!("unexpected {}", String::from_utf8_lossy(other)),
                }
            }
            started.elapsed()
        })
        .await
        .unwrap();
        std::env::remove_var("WATCHDOG_USEC");
        // Three keep-alives 100 ms apart (the first at once), not a flood.
        assert!(seen >= std::time::Duration::from_millis(150), "{seen:?}");
        stop.send(()).unwrap();
        assert_eq!(daemon.await.unwrap().unwrap(), ExitCode::SUCCESS);
    }

    #[test]
    fn one_daemon_per_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let held = lock_root(&root).unwrap();
        let err = lock_root(&root).unwrap_err().to_string();
        assert!(
            err.contains("another airgap-snapshotter") && err.contains(&root.display().to_string()),
            "{err}"
        );
        drop(held);
        lock_root(&root).unwrap();
    }
}
