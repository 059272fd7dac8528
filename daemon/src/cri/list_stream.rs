//! The server-streamed forms of the List calls (`StreamPodSandboxes`, `StreamContainers`,
//! `StreamImages`, the stats and metrics ones, Kubernetes 1.36): the same answer as the
//! List call, cut into messages of at most [`CHUNK`] items so that a node with many pods
//! never meets gRPC's message size limit.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

/// Items per message: a pod's or container's summary is well under 16 KiB (the CRI caps
/// labels and annotations), so a message stays far below the 16 MiB receive limit.
pub const CHUNK: usize = 256;

pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `items` as messages of at most [`CHUNK`] items, built by `wrap`; an empty list is one
/// empty message, so a client that reads one message sees the (empty) answer.
pub fn chunked<I, T>(mut items: Vec<I>, wrap: fn(Vec<I>) -> T) -> ListStream<T>
where
    I: Send + 'static,
    T: Send + 'static,
{
    let mut messages = Vec::with_capacity(items.len() / CHUNK + 1);
    while items.len() > CHUNK {
        let rest = items.split_off(CHUNK);
        messages.push(Ok(wrap(std::mem::replace(&mut items, rest))));
    }
    messages.push(Ok(wrap(items)));
    Box::pin(tokio_stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    async fn sizes(n: usize) -> Vec<usize> {
        let s = chunked((0..n).collect::<Vec<_>>(), |v| v);
        s.map(|m| m.unwrap().len()).collect().await
    }

    #[tokio::test]
    async fn a_list_is_cut_into_chunks_in_order() {
        assert_eq!(sizes(0).await, vec![0]);
        assert_eq!(sizes(CHUNK).await, vec![CHUNK]);
        assert_eq!(sizes(2 * CHUNK + 3).await, vec![CHUNK, CHUNK, 3]);
        let s = chunked((0..CHUNK + 5).collect::<Vec<_>>(), |v| v);
        let all: Vec<usize> = s.map(|m| m.unwrap()).collect::<Vec<_>>().await.concat();
        assert_eq!(all, (0..CHUNK + 5).collect::<Vec<_>>());
    }
}
