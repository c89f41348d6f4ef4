//! A CRI ImageService client that plays kubelet against containerd's CRI
//! plugin (generated from the trimmed `proto/cri/api.proto`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint};

/// Generated CRI v1 messages and the ImageService client.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

use v1::image_service_client::ImageServiceClient;

/// How long a PullImage may take before the test gives up.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// A blocking CRI ImageService client on containerd's unix socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
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
        let client = ImageServiceClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(Self { runtime, client })
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

    /// ImageStatus; `None` when the image is not present.
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

    /// ListImages without a filter.
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
}

fn image_spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        annotations: HashMap::new(),
        user_specified_image: image.to_string(),
        runtime_handler: String::new(),
    }
}
