//! containerd's API, compiled from `proto/` by `build.rs`: the snapshots
//! service this daemon serves (and calls, on containerd, to register
//! layers), and the content, images and leases services the importer calls;
//! and CRI's ImageService (client), for the pulls of image lists.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
    }
}

/// Kubernetes' CRI v1 (`runtime.v1`), as containerd's CRI plugin serves it.
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
