//! The server-streamed list calls of Kubernetes 1.36 (StreamPodSandboxes,
//! StreamContainers, StreamContainerStats, StreamPodSandboxStats, StreamPodSandboxMetrics,
//! StreamImages) answer what their List calls answer, filters included; and
//! UpdatePodSandboxResources accepts a known pod and refuses an unknown one.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use berth_cri::v1 as cri;
use berth_tests::berthd::Berthd;
use berth_tests::cri::{block_on, container_config, pod_config};
use berth_tests::image;
use berth_tests::pod::Pod;

/// Every message of a server stream, in order.
async fn all<T>(s: tonic::Response<tonic::Streaming<T>>) -> Result<Vec<T>> {
    let mut s = s.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn stream_calls_answer_what_the_list_calls_answer() -> Result<()> {
    let d = Berthd::builder().busybox().start()?;
    let logs = d.dir.path().join("logs");
    block_on(async {
        let (rs, is) = d.client().await?;
        let mut pods = Vec::new();
        for (name, tier) in [("front", "web"), ("back", "db")] {
            let mut cfg = pod_config(name, &logs.join(name));
            cfg.labels.insert("tier".into(), tier.into());
            let pod = Pod::run(&d, cfg).await?;
            pod.start(container_config(
                "c",
                image::BUSYBOX_IMAGE,
                &["sleep", "60"],
            ))
            .await?;
            pods.push(pod);
        }
        let mut r = rs.clone();
        let web = cri::PodSandboxFilter {
            label_selector: [("tier".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        for filter in [None, Some(web.clone())] {
            let listed: BTreeSet<String> = r
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: filter.clone(),
                })
                .await?
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            let streamed: BTreeSet<String> = all(r
                .stream_pod_sandboxes(cri::StreamPodSandboxesRequest { filter })
                .await?)
            .await?
            .into_iter()
            .flat_map(|m| m.pod_sandboxes)
            .map(|p| p.id)
            .collect();
            ensure!(
                !listed.is_empty() && listed == streamed,
                "{listed:?} vs {streamed:?}"
            );
        }
        let front = &pods[0].id;
        let listed: BTreeSet<String> = r
            .list_containers(cri::ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        let streamed: Vec<cri::Container> = all(r
            .stream_containers(cri::StreamContainersRequest::default())
            .await?)
        .await?
        .into_iter()
        .flat_map(|m| m.containers)
        .collect();
        let ids: BTreeSet<String> = streamed.iter().map(|c| c.id.clone()).collect();
        ensure!(listed.len() == 2 && listed == ids, "{listed:?} vs {ids:?}");
        let of_front: Vec<cri::Container> = all(r
            .stream_containers(cri::StreamContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: front.clone(),
                    ..Default::default()
                }),
            })
            .await?)
        .await?
        .into_iter()
        .flat_map(|m| m.containers)
        .collect();
        ensure!(
            of_front.len() == 1 && &of_front[0].pod_sandbox_id == front,
            "{of_front:?}"
        );
        let stats: Vec<String> = all(r
            .stream_container_stats(cri::StreamContainerStatsRequest::default())
            .await?)
        .await?
        .into_iter()
        .flat_map(|m| m.container_stats)
        .filter_map(|s| s.attributes.map(|a| a.id))
        .collect();
        ensure!(
            stats.iter().cloned().collect::<BTreeSet<_>>() == listed,
            "{stats:?}"
        );
        let pod_stats: BTreeSet<String> = all(r
            .stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest::default())
            .await?)
        .await?
        .into_iter()
        .flat_map(|m| m.pod_sandbox_stats)
        .filter_map(|s| s.attributes.map(|a| a.id))
        .collect();
        ensure!(
            pod_stats.len() == 2 && pod_stats.contains(front),
            "{pod_stats:?}"
        );
        let metrics: BTreeSet<String> = all(r
            .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
            .await?)
        .await?
        .into_iter()
        .flat_map(|m| m.pod_sandbox_metrics)
        .map(|m| m.pod_sandbox_id)
        .collect();
        ensure!(metrics == pod_stats, "{metrics:?} vs {pod_stats:?}");
        let mut i = is.clone();
        let images: Vec<String> = i
            .list_images(cri::ListImagesRequest::default())
            .await?
            .into_inner()
            .images
            .into_iter()
            .map(|im| im.id)
            .collect();
        let streamed: Vec<String> =
            all(i.stream_images(cri::StreamImagesRequest::default()).await?)
                .await?
                .into_iter()
                .flat_map(|m| m.images)
                .map(|im| im.id)
                .collect();
        ensure!(
            !images.is_empty() && images == streamed,
            "{images:?} vs {streamed:?}"
        );

        r.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: front.clone(),
            ..Default::default()
        })
        .await?;
        let err = r
            .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
                pod_sandbox_id: "no-such-pod".into(),
                ..Default::default()
            })
            .await
            .expect_err("an unknown pod's resources updated");
        ensure!(err.code() == tonic::Code::NotFound, "{err}");
        for p in pods {
            p.remove().await?;
        }
        Ok::<_, anyhow::Error>(())
    })??;
    d.finish()
}
