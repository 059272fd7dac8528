//! The CRI ImageService calls the image suites make (pull, status, list, remove,
//! ImageFsInfo), and a look at berthd's content store.

use anyhow::{bail, Context, Result};
use berth_cri::v1 as cri;
use std::path::Path;
use tonic::transport::Channel;

use crate::cri::ImageServiceClient;

/// The image spec of `image`.
fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// PullImage of `image`, with `auth` when given; the image ref berthd returns.
pub async fn pull(
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> std::result::Result<String, tonic::Status> {
    Ok(is
        .clone()
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?
        .into_inner()
        .image_ref)
}

/// ImageStatus of `image` (None when berthd does not have it).
pub async fn status(is: &ImageServiceClient<Channel>, image: &str) -> Result<Option<cri::Image>> {
    Ok(is
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

/// Every image ListImages reports.
pub async fn list(is: &ImageServiceClient<Channel>) -> Result<Vec<cri::Image>> {
    Ok(is
        .clone()
        .list_images(cri::ListImagesRequest { filter: None })
        .await?
        .into_inner()
        .images)
}

pub async fn remove(
    is: &ImageServiceClient<Channel>,
    image: &str,
) -> std::result::Result<(), tonic::Status> {
    is.clone()
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await?;
    Ok(())
}

/// ImageFsInfo's image filesystem: (used bytes, used inodes).
pub async fn fs_info(is: &ImageServiceClient<Channel>) -> Result<(u64, u64)> {
    let r = is
        .clone()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await?
        .into_inner();
    let fs = r
        .image_filesystems
        .first()
        .context("ImageFsInfo reported no image filesystem")?;
    Ok((
        fs.used_bytes.as_ref().map_or(0, |v| v.value),
        fs.inodes_used.as_ref().map_or(0, |v| v.value),
    ))
}

/// The files under berthd's content store directory `sub` (`blobs/sha256`, `ingest`).
pub fn content_files(root: &Path, sub: &str) -> Vec<(String, u64)> {
    let dir = root.join("content").join(sub);
    let mut v: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// PullImage that must succeed: a failure carries the CRI status and berthd's log.
pub async fn pull_ok(
    d: &crate::berthd::Berthd,
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String> {
    pull(is, image, auth).await.map_err(|s| {
        anyhow::anyhow!(
            "PullImage {image}: {:?}: {}\nberthd log:\n{}",
            s.code(),
            s.message(),
            d.log()
        )
    })
}

/// PullImage that must fail: its status.
pub async fn pull_err(
    is: &ImageServiceClient<Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<tonic::Status> {
    match pull(is, image, auth).await {
        Ok(id) => bail!("PullImage {image} succeeded (image {id})"),
        Err(s) => Ok(s),
    }
}
