//! systemd's notify protocol, for `Type=notify` in berthd.service: READY=1 once the CRI
//! server accepts calls (after startup recovery), STOPPING=1 when a SIGTERM begins the
//! stop. Nothing is sent unless systemd started berthd (NOTIFY_SOCKET is set; the shims
//! are started without it), and a failed send is only logged.

use sd_notify::NotifyState;

/// READY=1: CRI is served.
pub async fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving CRI")]).await;
}

/// STOPPING=1: berthd is stopping; the pods keep running.
pub async fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping; pods keep running"),
    ])
    .await;
}

async fn send(states: &'static [NotifyState<'static>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // One datagram to a local socket; still off the async workers.
    let sent = tokio::task::spawn_blocking(move || sd_notify::notify(states)).await;
    match sent {
        Ok(Ok(())) => tracing::debug!(?states, "told systemd"),
        Ok(Err(e)) => tracing::warn!(error = %e, "sd_notify"),
        Err(e) => tracing::warn!(error = %e, "sd_notify"),
    }
}
