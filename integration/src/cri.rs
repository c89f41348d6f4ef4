//! A CRI client that plays kubelet against containerd's CRI plugin
//! (generated from the trimmed `proto/cri/api.proto`): the ImageService
//! (pull, status, list, remove) and the RuntimeService calls that run a pod
//! ([`CriClient::run_pod_once`]).
//!
//! Everything here blocks (a private current-thread tokio runtime), so
//! tests call it like any other harness part.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tonic::transport::{Channel, Endpoint};

use crate::TestDir;

/// Generated CRI v1 messages and the ImageService and RuntimeService clients.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// How long a PullImage may take before the test gives up.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long [`CriClient::run_pod_once`] waits for its container to exit.
pub const POD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long any other CRI call may take (RunPodSandbox included: it may
/// pull the sandbox image).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The `terminationGracePeriodSeconds` of the pods [`CriClient::run_pod_once`]
/// runs: the StopContainer timeout (kubelet's default is 30; the command
/// has exited when it is stopped, unless it timed out).
pub const GRACE_PERIOD_SECONDS: i64 = 2;

/// The name of the one container of a [`CriClient::run_pod_once`] pod.
pub const CONTAINER_NAME: &str = "main";

/// The Kubernetes namespace of the pods the tests run.
pub const POD_NAMESPACE: &str = "default";

/// The CRI API version kubelet asks for in `Version`.
pub const CRI_API_VERSION: &str = "v1";

/// What a container of [`CriClient::run_pod_once`] printed and how it
/// ended, from its CRI log file and its final ContainerStatus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRun {
    /// stdout and stderr as one text, in the order containerd logged them
    /// (what `kubectl logs` shows).
    pub output: String,
    /// The stdout lines only.
    pub stdout: String,
    /// The stderr lines only.
    pub stderr: String,
    /// The exit code of the command (ContainerStatus `exit_code`).
    pub exit_code: i32,
    /// ContainerStatus `reason` (`Completed`, `Error`, `OOMKilled`, ...).
    pub reason: String,
    /// The image id kubelet resolved the image to with ImageStatus (the
    /// `sha256:<config digest>` that CreateContainer was given).
    pub image_id: String,
    /// ContainerStatus `image_ref`: what containerd says the container ran
    /// (`<repo>@sha256:<manifest digest>` when known, else the image id).
    pub image_ref: String,
}

/// The error [`CriClient::run_pod_once`] fails with when the image is not
/// present (kubelet's `ErrImageNeverPull` for `imagePullPolicy: Never`):
/// find it with `err.downcast_ref::<ImageNeverPull>()`. The pod was
/// removed again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNeverPull {
    /// The image as the pod spec names it.
    pub image: String,
}

impl std::fmt::Display for ImageNeverPull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ErrImageNeverPull: container image {:?} is not present with pull policy of Never",
            self.image
        )
    }
}

impl std::error::Error for ImageNeverPull {}

/// A blocking CRI client (ImageService and RuntimeService) on containerd's
/// unix socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
    runtime_client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the containerd socket at `address`.
    pub fn connect(address: &Path) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        let uri = format!("unix://{}", address.display());
        let channel = runtime
            .block_on(async {
                Endpoint::from_shared(uri.clone())?
                    .connect_timeout(Duration::from_secs(10))
                    .connect()
                    .await
            })
            .with_context(|| format!("connecting to CRI at {uri}"))?;
        let client = ImageServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let runtime_client = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(Self {
            runtime,
            client,
            runtime_client,
        })
    }

    /// PullImage exactly as kubelet sends it for a pod: the image spec with
    /// the reference as written in the pod spec, no credentials, and the
    /// pod's sandbox config (metadata name, namespace, uid, attempt; log
    /// directory; labels and annotations). Returns the image ref containerd
    /// answers (the image id, `sha256:<config>`).
    pub fn pull_image(&mut self, image: &str) -> Result<String> {
        let pod = format!("e2e-{}", std::process::id());
        let uid = format!("00000000-0000-4000-8000-{:012x}", std::process::id());
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), pod.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "default".to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
        ]);
        let request = v1::PullImageRequest {
            image: Some(image_spec(image)),
            auth: None,
            sandbox_config: Some(v1::PodSandboxConfig {
                metadata: Some(v1::PodSandboxMetadata {
                    name: pod.clone(),
                    uid: uid.clone(),
                    namespace: "default".to_string(),
                    attempt: 0,
                }),
                hostname: pod.clone(),
                log_directory: format!("/var/log/pods/default_{pod}_{uid}"),
                labels,
                annotations: HashMap::from([(
                    "kubernetes.io/config.source".to_string(),
                    "api".to_string(),
                )]),
                dns_config: None,
                linux: None,
            }),
        };
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(async {
                tokio::time::timeout(PULL_TIMEOUT, client.pull_image(request)).await
            })
            .with_context(|| format!("CRI PullImage {image} timed out after {PULL_TIMEOUT:?}"))?
            .with_context(|| format!("CRI PullImage {image}"))?;
        Ok(response.into_inner().image_ref)
    }

    /// ImageStatus of `image` (a reference as a pod spec writes it, e.g.
    /// `127.0.0.1:5000/library/x:v1`, or an image id `sha256:...`), as
    /// kubelet asks before it creates a container: `None` when containerd
    /// does not have the image (kubelet would pull it, or fail the pod with
    /// `ErrImageNeverPull` under `imagePullPolicy: Never`). The image's
    /// `id` is what kubelet hands to CreateContainer; `pinned` is true for
    /// the sandbox image (containerd 1.7 and later) and never garbage
    /// collected by kubelet.
    pub fn image_status(&mut self, image: &str) -> Result<Option<v1::Image>> {
        let mut client = self.client.clone();
        let request = v1::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let response = self
            .runtime
            .block_on(client.image_status(request))
            .with_context(|| format!("CRI ImageStatus {image}"))?;
        Ok(response.into_inner().image)
    }

    /// ListImages without a filter: every image CRI knows (containerd's
    /// `k8s.io` namespace), one entry per image id with all its
    /// `repo_tags` and `repo_digests`, the sandbox image included (with
    /// `pinned` set on 1.7 and later). What kubelet's image garbage
    /// collector and `crictl images` see.
    pub fn list_images(&mut self) -> Result<Vec<v1::Image>> {
        let mut client = self.client.clone();
        let response = self
            .runtime
            .block_on(client.list_images(v1::ListImagesRequest { filter: None }))
            .context("CRI ListImages")?;
        Ok(response.into_inner().images)
    }

    /// RemoveImage (all of the image's references).
    pub fn remove_image(&mut self, image: &str) -> Result<()> {
        let mut client = self.client.clone();
        let request = v1::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.runtime
            .block_on(client.remove_image(request))
            .with_context(|| format!("CRI RemoveImage {image}"))?;
        Ok(())
    }

    /// Runs one CRI call with [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
            .with_context(|| format!("CRI {what} timed out after {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("CRI {what}"))?;
        Ok(response.into_inner())
    }

    /// Version, as kubelet calls it first: the runtime's name (`containerd`),
    /// its version and the CRI API version (`v1`).
    pub fn version(&mut self) -> Result<v1::VersionResponse> {
        let mut client = self.runtime_client.clone();
        let request = v1::VersionRequest {
            version: CRI_API_VERSION.to_string(),
        };
        self.call("Version", client.version(request))
    }

    /// ListPodSandbox without a filter: every sandbox, ready or not.
    pub fn list_pod_sandboxes(&mut self) -> Result<Vec<v1::PodSandbox>> {
        let mut client = self.runtime_client.clone();
        let request = v1::ListPodSandboxRequest { filter: None };
        Ok(self
            .call("ListPodSandbox", client.list_pod_sandbox(request))?
            .items)
    }

    /// ListContainers without a filter: every container, in any state.
    pub fn list_containers(&mut self) -> Result<Vec<v1::Container>> {
        let mut client = self.runtime_client.clone();
        let request = v1::ListContainersRequest { filter: None };
        Ok(self
            .call("ListContainers", client.list_containers(request))?
            .containers)
    }

    /// ContainerStatus with `verbose` set: the status, and the process id
    /// of the container's init process from the runtime's verbose `info`
    /// (containerd puts it in the `info` JSON as `pid`; 0 when it has
    /// none, e.g. the container exited).
    pub fn container_status(&mut self, container_id: &str) -> Result<(v1::ContainerStatus, u32)> {
        let mut client = self.runtime_client.clone();
        let response = self.call(
            "ContainerStatus",
            client.container_status(v1::ContainerStatusRequest {
                container_id: container_id.to_string(),
                verbose: true,
            }),
        )?;
        let status = response
            .status
            .with_context(|| format!("ContainerStatus {container_id} without a status"))?;
        let pid = response
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or(0);
        Ok((status, pid))
    }

    /// Stops and removes every container and pod sandbox this runtime
    /// has, as kubelet does for pods it deletes: StopContainer (with
    /// `grace_seconds`), RemoveContainer, StopPodSandbox, RemovePodSandbox.
    /// Every call is made even when one fails; the first error is returned.
    pub fn remove_all_pods(&mut self, grace_seconds: i64) -> Result<()> {
        let mut errors = Vec::new();
        for container in self.list_containers()? {
            self.stop_and_remove_container(&container.id, grace_seconds, &mut errors);
        }
        for sandbox in self.list_pod_sandboxes()? {
            self.stop_and_remove_sandbox(&sandbox.id, &mut errors);
        }
        first_error(errors, "removing pods")
    }

    /// Runs `command` (the pod spec's `command`, i.e. the entrypoint; no
    /// `args`) in `image` as a one-container pod with `hostNetwork: true`,
    /// `restartPolicy: Never` and `imagePullPolicy: Never`, waits until it
    /// exits (at most [`POD_TIMEOUT`]) and returns what it printed and its
    /// exit code. A non-zero exit code is not an error: check
    /// [`PodRun::exit_code`].
    ///
    /// The calls are kubelet's for such a pod, in kubelet's order, and never
    /// PullImage (containerd pulls the sandbox image itself when it lacks
    /// it, see [`crate::containerd::ContainerdOptions::sandbox_image`]):
    ///
    /// 1. RunPodSandbox: metadata, labels and annotations as kubelet sets
    ///    them, no hostname (host network), the log directory in a
    ///    temporary directory, the Linux config of a BestEffort pod
    ///    (cgroup parent `/kubepods/besteffort/pod<uid>`, namespaces
    ///    network NODE, pid CONTAINER, ipc POD, seccomp RuntimeDefault),
    ///    DNS from the node's `/etc/resolv.conf`; runtime handler `""`.
    ///    Then PodSandboxStatus, which must say READY.
    /// 2. ImageStatus of `image`: when it is not present this fails with
    ///    [`ImageNeverPull`] (after removing the pod), as kubelet does.
    /// 3. CreateContainer with the image id from ImageStatus (and `image`
    ///    as `user_specified_image`), labels and annotations as kubelet
    ///    sets them, log path `main/0.log`, BestEffort resources (CPU
    ///    shares 2, CFS period 100000, OOM score adjustment 1000), the
    ///    default masked and read-only paths, seccomp Unconfined, no
    ///    mounts, no environment; then StartContainer.
    /// 4. ContainerStatus every 100 ms until EXITED.
    /// 5. The CRI log file is read (`<RFC3339Nano time> <stream> <P|F>
    ///    <msg>` lines, see [`parse_cri_log`]).
    /// 6. StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox:
    ///    always, also when an earlier step failed; then the pod's cgroup
    ///    directories (kubelet's job) and log directory are removed. A
    ///    failed cleanup call fails the run.
    pub fn run_pod_once(&mut self, image: &str, command: &[&str]) -> Result<PodRun> {
        static PODS: AtomicU32 = AtomicU32::new(0);
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let pod = PodIdentity {
            name: format!("airgap-e2e-pod-{pid}-{n}"),
            uid: format!("00000000-0000-4000-8001-{:08x}{n:04x}", pid),
        };
        let logs = TestDir::new("pod-logs")?;
        let log_directory = logs
            .path()
            .join(format!("{POD_NAMESPACE}_{}_{}", pod.name, pod.uid));
        // kubelet creates the pod's and the container's log directories.
        std::fs::create_dir_all(log_directory.join(CONTAINER_NAME))
            .with_context(|| format!("creating {}", log_directory.display()))?;
        let cgroups = PodCgroups::new(&pod.cgroup_parent());
        let sandbox_config = pod.sandbox_config(&log_directory);

        let mut client = self.runtime_client.clone();
        let sandbox_id = self
            .call(
                "RunPodSandbox",
                client.run_pod_sandbox(v1::RunPodSandboxRequest {
                    config: Some(sandbox_config.clone()),
                    runtime_handler: String::new(),
                }),
            )
            .map(|r| r.pod_sandbox_id);
        let sandbox_id = match sandbox_id {
            Ok(id) => id,
            Err(err) => {
                // A failed RunPodSandbox cleans up after itself.
                cgroups.remove();
                return Err(err);
            }
        };
        let mut container_id = None;
        let result = self.run_in_sandbox(
            &sandbox_id,
            &sandbox_config,
            &log_directory,
            &pod,
            image,
            command,
            &mut container_id,
        );
        let cleanup = self.remove_pod(&sandbox_id, container_id.as_deref());
        cgroups.remove();
        drop(logs);
        match (result, cleanup) {
            (Ok(run), Ok(())) => Ok(run),
            (Ok(_), Err(err)) => Err(err.context("removing the pod after it ran")),
            (Err(err), Ok(())) => Err(err),
            (Err(err), Err(cleanup)) => {
                Err(err.context(format!("(removing the pod failed too: {cleanup:#})")))
            }
        }
    }

    /// Steps 1 (status) to 5 of [`CriClient::run_pod_once`]; sets
    /// `container_id` as soon as there is a container to remove.
    #[allow(clippy::too_many_arguments)]
    fn run_in_sandbox(
        &mut self,
        sandbox_id: &str,
        sandbox_config: &v1::PodSandboxConfig,
        log_directory: &Path,
        pod: &PodIdentity,
        image: &str,
        command: &[&str],
        container_id: &mut Option<String>,
    ) -> Result<PodRun> {
        let mut client = self.runtime_client.clone();
        let status = self.call(
            "PodSandboxStatus",
            client.pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                verbose: false,
            }),
        )?;
        let state = status.status.as_ref().map(|s| s.state());
        if state != Some(v1::PodSandboxState::SandboxReady) {
            bail!("pod sandbox {sandbox_id} is {state:?} after RunPodSandbox, not READY");
        }

        // imagePullPolicy: Never: kubelet only asks whether the image is there.
        let Some(found) = self.image_status(image)? else {
            return Err(ImageNeverPull {
                image: image.to_string(),
            }
            .into());
        };
        let config = pod.container_config(image, &found.id, command);
        let log_path = log_directory.join(&config.log_path);
        let id = self
            .call(
                "CreateContainer",
                client.create_container(v1::CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.to_string(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config.clone()),
                }),
            )?
            .container_id;
        *container_id = Some(id.clone());
        self.call(
            "StartContainer",
            client.start_container(v1::StartContainerRequest {
                container_id: id.clone(),
            }),
        )?;

        let deadline = Instant::now() + POD_TIMEOUT;
        let status = loop {
            let status = self
                .call(
                    "ContainerStatus",
                    client.container_status(v1::ContainerStatusRequest {
                        container_id: id.clone(),
                        verbose: false,
                    }),
                )?
                .status
                .context("ContainerStatus without a status")?;
            if status.state() == v1::ContainerState::ContainerExited {
                break status;
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {id} of {image} did not exit within {POD_TIMEOUT:?} (state {:?}); its log so far:\n{}",
                    status.state(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = read_settled(&log_path)?;
        let mut run = parse_cri_log(&log)
            .with_context(|| format!("parsing the CRI log {}", log_path.display()))?;
        run.exit_code = status.exit_code;
        run.reason = status.reason;
        run.image_id = found.id;
        run.image_ref = status.image_ref;
        Ok(run)
    }

    /// Step 6 of [`CriClient::run_pod_once`]: every call is made even when
    /// one fails; the first error is returned.
    fn remove_pod(&mut self, sandbox_id: &str, container_id: Option<&str>) -> Result<()> {
        let mut errors = Vec::new();
        if let Some(id) = container_id {
            self.stop_and_remove_container(id, GRACE_PERIOD_SECONDS, &mut errors);
        }
        self.stop_and_remove_sandbox(sandbox_id, &mut errors);
        first_error(errors, &format!("removing pod {sandbox_id}"))
    }

    /// StopContainer (with `grace_seconds`) then RemoveContainer, both
    /// made whatever the first answers; their errors go to `errors`.
    fn stop_and_remove_container(
        &mut self,
        id: &str,
        grace_seconds: i64,
        errors: &mut Vec<anyhow::Error>,
    ) {
        let mut client = self.runtime_client.clone();
        let stop = v1::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace_seconds,
        };
        errors.extend(
            self.call("StopContainer", client.stop_container(stop))
                .err(),
        );
        let remove = v1::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        errors.extend(
            self.call("RemoveContainer", client.remove_container(remove))
                .err(),
        );
    }

    /// StopPodSandbox then RemovePodSandbox, both made whatever the first
    /// answers; their errors go to `errors`.
    fn stop_and_remove_sandbox(&mut self, id: &str, errors: &mut Vec<anyhow::Error>) {
        let mut client = self.runtime_client.clone();
        let stop = v1::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        errors.extend(
            self.call("StopPodSandbox", client.stop_pod_sandbox(stop))
                .err(),
        );
        let remove = v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        errors.extend(
            self.call("RemovePodSandbox", client.remove_pod_sandbox(remove))
                .err(),
        );
    }
}

/// The names of one pod of [`CriClient::run_pod_once`].
struct PodIdentity {
    name: String,
    uid: String,
}

impl PodIdentity {
    /// kubelet's pod cgroup (cgroupfs driver, BestEffort QoS class).
    fn cgroup_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }

    fn namespaces() -> v1::NamespaceOption {
        v1::NamespaceOption {
            network: v1::NamespaceMode::Node as i32,
            pid: v1::NamespaceMode::Container as i32,
            ipc: v1::NamespaceMode::Pod as i32,
            target_id: String::new(),
        }
    }

    /// kubelet's generatePodSandboxConfig for a `hostNetwork: true` pod
    /// without a security context.
    fn sandbox_config(&self, log_directory: &Path) -> v1::PodSandboxConfig {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), self.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                POD_NAMESPACE.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), self.uid.clone()),
            ("app".to_string(), "airgap-e2e".to_string()),
        ]);
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_string(), "api".to_string()),
            (
                "kubernetes.io/config.seen".to_string(),
                rfc3339_nano(SystemTime::now()),
            ),
        ]);
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: POD_NAMESPACE.to_string(),
                attempt: 0,
            }),
            // kubelet sets no hostname for host-network pods.
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            dns_config: Some(host_dns_config()),
            labels,
            annotations,
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(Self::namespaces()),
                    privileged: false,
                    // kubelet forces runtime/default on the sandbox.
                    seccomp: Some(v1::SecurityProfile {
                        profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    /// kubelet's generateContainerConfig for a BestEffort container with
    /// `command` and nothing else set.
    fn container_config(
        &self,
        image: &str,
        image_id: &str,
        command: &[&str],
    ) -> v1::ContainerConfig {
        let labels = HashMap::from([
            (
                "io.kubernetes.container.name".to_string(),
                CONTAINER_NAME.to_string(),
            ),
            ("io.kubernetes.pod.name".to_string(), self.name.clone()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                POD_NAMESPACE.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), self.uid.clone()),
        ]);
        let annotations = HashMap::from([
            (
                "io.kubernetes.container.hash".to_string(),
                format!("{:08x}", fnv1a(&format!("{image}{command:?}"))),
            ),
            (
                "io.kubernetes.container.restartCount".to_string(),
                "0".to_string(),
            ),
            (
                "io.kubernetes.container.terminationMessagePath".to_string(),
                "/dev/termination-log".to_string(),
            ),
            (
                "io.kubernetes.container.terminationMessagePolicy".to_string(),
                "File".to_string(),
            ),
            (
                "io.kubernetes.pod.terminationGracePeriod".to_string(),
                GRACE_PERIOD_SECONDS.to_string(),
            ),
        ]);
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: CONTAINER_NAME.to_string(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: image_id.to_string(),
                annotations: HashMap::new(),
                user_specified_image: image.to_string(),
                runtime_handler: String::new(),
            }),
            command: command.iter().map(|c| c.to_string()).collect(),
            args: Vec::new(),
            working_dir: String::new(),
            envs: Vec::new(),
            mounts: Vec::new(),
            devices: Vec::new(),
            labels,
            annotations,
            log_path: format!("{CONTAINER_NAME}/0.log"),
            stdin: false,
            stdin_once: false,
            tty: false,
            linux: Some(v1::LinuxContainerConfig {
                resources: Some(v1::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 0,
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(v1::LinuxContainerSecurityContext {
                    namespace_options: Some(Self::namespaces()),
                    masked_paths: DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
                    readonly_paths: DEFAULT_READONLY_PATHS
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                    // No seccomp profile in the pod spec and kubelet's
                    // seccompDefault off: Unconfined.
                    seccomp: Some(v1::SecurityProfile {
                        profile_type: v1::security_profile::ProfileType::Unconfined as i32,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                }),
            }),
        }
    }
}

/// kubelet's default masked paths (`procMount: Default`).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// kubelet's default read-only paths (`procMount: Default`).
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The DNS config kubelet sends for a host-network pod with the default
/// `dnsPolicy: ClusterFirst` (which falls back to `Default` there): the
/// node's resolv.conf.
fn host_dns_config() -> v1::DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = v1::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
            Some("search") => dns.searches = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

/// The cgroup directories of a pod that kubelet would create and remove
/// (containerd's default cgroupfs driver): the ones that did not exist
/// before the pod ran, in every mounted hierarchy, removed (when empty)
/// after the pod.
struct PodCgroups {
    created: Vec<PathBuf>,
}

impl PodCgroups {
    fn new(parent: &str) -> Self {
        let mut created = Vec::new();
        let root = Path::new("/sys/fs/cgroup");
        // cgroup v2: one hierarchy; v1 (or hybrid): one per directory.
        let hierarchies: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
            vec![root.to_path_buf()]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .filter(|p| p.is_dir())
                .collect();
            found.sort();
            found.dedup();
            found
        };
        for hierarchy in hierarchies {
            // Deepest first: pod<uid>, besteffort, kubepods.
            let mut dir = hierarchy.join(parent.trim_start_matches('/'));
            while dir != hierarchy {
                if !dir.exists() {
                    created.push(dir.clone());
                }
                if !dir.pop() {
                    break;
                }
            }
        }
        Self { created }
    }

    fn remove(&self) {
        for dir in &self.created {
            match std::fs::remove_dir(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => eprintln!("warning: removing cgroup {}: {err}", dir.display()),
            }
        }
    }
}

/// Reads a container log file once it stopped growing (containerd may
/// still be copying the last output when the container is EXITED).
fn read_settled(path: &Path) -> Result<String> {
    let mut last = None;
    for _ in 0..20 {
        let len = std::fs::metadata(path).map(|m| m.len()).ok();
        if len.is_some() && len == last {
            break;
        }
        last = len;
        std::thread::sleep(Duration::from_millis(50));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses a CRI container log file, one `<RFC3339Nano time> <stream>
/// <tag> <msg>` line per write: `stream` is `stdout` or `stderr`; `tag` is
/// `F` (a full line: `msg` then a newline) or `P` (a partial line: `msg`
/// continues in the next entry), possibly followed by `:`-separated
/// attributes. Fills [`PodRun::output`], `stdout` and `stderr`; a line
/// that is not in this format is an error.
pub fn parse_cri_log(log: &str) -> Result<PodRun> {
    let mut run = PodRun::default();
    for (n, line) in log.split_terminator('\n').enumerate() {
        let mut fields = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            bail!(
                "line {}: not `<time> <stream> <tag> <msg>`: {line:?}",
                n + 1
            );
        };
        let msg = fields.next().unwrap_or("");
        if !time.contains('T') {
            bail!("line {}: {time:?} is not an RFC 3339 time", n + 1);
        }
        let full = match tag.split(':').next() {
            Some("F") => true,
            Some("P") => false,
            _ => bail!("line {}: unknown tag {tag:?}", n + 1),
        };
        let out = match stream {
            "stdout" => &mut run.stdout,
            "stderr" => &mut run.stderr,
            _ => bail!("line {}: unknown stream {stream:?}", n + 1),
        };
        for text in [&mut *out, &mut run.output] {
            text.push_str(msg);
            if full {
                text.push('\n');
            }
        }
    }
    Ok(run)
}

/// `time` as RFC 3339 with nanoseconds in UTC (`2026-12-01T09:55:14.123456789Z`),
/// as kubelet writes `kubernetes.io/config.seen`.
fn rfc3339_nano(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_nanos()
    )
}

/// FNV-1a, 32 bits: a stand-in for kubelet's container hash annotation.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn image_spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        annotations: HashMap::new(),
        user_specified_image: image.to_string(),
        runtime_handler: String::new(),
    }
}

/// The first of `errors` (the others printed as warnings about `what`), or
/// Ok when there are none.
fn first_error(errors: Vec<anyhow::Error>, what: &str) -> Result<()> {
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => {
            for other in errors {
                eprintln!("warning: {what}: {other:#}");
            }
            Err(first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_join_partials_and_split_streams() {
        let log = "2026-12-01T09:55:14.000000001Z stdout F hello airgap\n\
                   2026-12-01T09:55:14.000000002Z stderr F oops\n\
                   2026-12-01T09:55:14.000000003Z stdout P par\n\
                   2026-12-01T09:55:14.000000004Z stdout F tial\n\
                   2026-12-01T09:55:14.000000005Z stdout F \n\
                   2026-12-01T09:55:14.000000006Z stdout F two  spaces\n";
        let run = parse_cri_log(log).unwrap();
        assert_eq!(run.output, "hello airgap\noops\npartial\n\ntwo  spaces\n");
        assert_eq!(run.stdout, "hello airgap\npartial\n\ntwo  spaces\n");
        assert_eq!(run.stderr, "oops\n");
        assert_eq!(parse_cri_log("").unwrap(), PodRun::default());
        assert!(parse_cri_log("hello\n").is_err());
        assert!(parse_cri_log("2026-12-01T09:55:14Z stdout X x\n").is_err());
        assert!(parse_cri_log("2026-12-01T09:55:14Z console F x\n").is_err());
    }

    #[test]
    fn rfc3339_nano_formats_utc() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn not_present_error_is_found_by_downcast() {
        let err: anyhow::Error = ImageNeverPull {
            image: "x:v1".into(),
        }
        .into();
        let err = err.context("running a pod");
        assert_eq!(
            err.downcast_ref::<ImageNeverPull>()
                .map(|e| e.image.as_str()),
            Some("x:v1")
        );
    }
}
