//! `runtime.v1.ImageService` over the local image store: pull, list, status, remove and
//! filesystem usage (`berthd image import` is the offline path).

use std::sync::Arc;

use berth_cri::v1::image_service_server::ImageService;
use berth_cri::v1::*;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::Core;
use crate::error::Error;
use crate::image::ImageRecord;

pub struct Service {
    pub core: Arc<Core>,
}

/// uid (numeric user) or username, from the image config's `user` ("uid[:gid]" or "name").
fn user_of(rec: &ImageRecord) -> (Option<Int64Value>, String) {
    let user = rec.config.user.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

fn image(rec: &ImageRecord, pinned: bool) -> Image {
    let (uid, username) = user_of(rec);
    Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}

impl Service {
    /// The configured sandbox image is pinned: kubelet's image GC leaves it alone.
    fn pinned(&self, rec: &ImageRecord) -> bool {
        let name = &self.core.config.runtime.sandbox_image;
        !name.is_empty()
            && crate::image::reference::parse(name).is_ok_and(|r| {
                rec.repo_tags.contains(&r.to_string())
                    || rec
                        .repo_digests
                        .iter()
                        .any(|d| Some(d) == r.repo_digest().as_ref())
            })
    }
}

#[tonic::async_trait]
impl ImageService for Service {
    type StreamImagesStream = super::list_stream::ListStream<StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = req.into_inner().filter;
        let list = self
            .list_images(Request::new(ListImagesRequest { filter }))
            .await?;
        Ok(Response::new(super::list_stream::chunked(
            list.into_inner().images,
            |images| StreamImagesResponse { images },
        )))
    }

    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let wanted = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let images = match wanted {
            Some(r) => match self.core.images.get(&r) {
                Ok(rec) => vec![image(&rec, self.pinned(&rec))],
                Err(Error::NotFound(_)) => vec![],
                Err(e) => return Err(e.into()),
            },
            None => self
                .core
                .images
                .list()?
                .iter()
                .map(|r| image(r, self.pinned(r)))
                .collect(),
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let r = req.into_inner();
        let reference = r.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("image reference is required"));
        }
        // An unknown image is not an error for ImageStatus: kubelet expects an empty reply.
        match self.core.images.get(&reference) {
            Ok(rec) => {
                let mut info = std::collections::HashMap::new();
                if r.verbose {
                    info.insert(
                        "info".to_string(),
                        serde_json::json!({ "config": rec.config, "chainIds": rec.chain_ids })
                            .to_string(),
                    );
                }
                Ok(Response::new(ImageStatusResponse {
                    image: Some(image(&rec, self.pinned(&rec))),
                    info,
                }))
            }
            Err(Error::NotFound(_)) => Ok(Response::new(ImageStatusResponse::default())),
            Err(e) => Err(e.into()),
        }
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let r = req.into_inner();
        let reference = r.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("image reference is required"));
        }
        let creds = match &r.auth {
            Some(a) => super::convert::credentials_from_cri(a)?,
            None => Default::default(),
        };
        let span = tracing::info_span!("pull_image", image = %reference);
        let rec = self
            .core
            .images
            .pull(&self.core.puller, &reference, &creds)
            .instrument(span)
            .await?;
        tracing::info!(image = %reference, id = %rec.id, "image pulled");
        Ok(Response::new(PullImageResponse { image_ref: rec.id }))
    }

    async fn remove_image(
        &self,
        req: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let reference = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("image reference is required"));
        }
        // An image a container uses is untagged like any other: the container's lease
        // keeps the snapshots it runs on until it is removed.
        match self.core.images.remove(&reference) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(Response::new(RemoveImageResponse {})),
            Err(e) => Err(e.into()),
        }
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        // Walks of the content, snapshots and writable layers: blocking, off the workers.
        let images = self.core.images.clone();
        let dir = self.core.config.paths.root.join("containers");
        let walk_dir = dir.clone();
        let ((bytes, inodes), (cbytes, cinodes)) = tokio::task::spawn_blocking(move || {
            Ok::<_, Error>((images.fs_usage()?, crate::util::reported_usage(&walk_dir)))
        })
        .await
        .map_err(|e| Error::Internal(format!("disk usage: {e}")))??;
        let usage = FilesystemUsage {
            timestamp: crate::util::now_ns(),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self
                    .core
                    .config
                    .paths
                    .root
                    .join("snapshots")
                    .display()
                    .to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        // The containers' writable layers (upper and work dirs), on the same filesystem.
        let containers = FilesystemUsage {
            timestamp: usage.timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: cbytes }),
            inodes_used: Some(UInt64Value { value: cinodes }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: vec![containers],
        }))
    }
}
