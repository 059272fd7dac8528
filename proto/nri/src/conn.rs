//! Both ends of an NRI connection: the trunk multiplexed ([`crate::mux`]), one side's
//! service served on its logical connection and a client of the other side's service
//! on the other.

use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::io::DuplexStream;
use tokio::net::UnixStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server};

use crate::api_ttrpc::{
    create_plugin, create_runtime, Plugin, PluginClient, Runtime, RuntimeClient,
};
use crate::mux::{Mux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

/// A multiplexed NRI connection with one side's service being served. Closing it (or
/// dropping it) closes the trunk.
pub struct Connection {
    pub mux: Mux,
    /// Kept for as long as the connection (a ttrpc server is not `Sync`: behind a lock).
    _server: std::sync::Mutex<Server>,
}

impl Connection {
    pub fn close(&self) {
        self.mux.close();
    }
}

/// A ttrpc server for one already-connected stream.
async fn serve(
    end: DuplexStream,
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
) -> ttrpc::Result<Server> {
    let incoming =
        stream::once(async move { Ok::<_, std::io::Error>(end) }).chain(stream::pending());
    let mut server = Server::new()
        .register_service(services)
        .add_listener(Listener::new(incoming));
    server.start().await?;
    Ok(server)
}

/// The runtime's end: serves `runtime` to the plugin, returns a client of the plugin.
pub async fn runtime_side(
    trunk: UnixStream,
    runtime: Arc<dyn Runtime + Send + Sync>,
) -> ttrpc::Result<(Connection, PluginClient)> {
    let (mux, mut ends) = Mux::new(trunk, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let runtime_end = ends.pop().expect("runtime service end");
    let plugin_end = ends.pop().expect("plugin service end");
    let server = serve(runtime_end, create_runtime(runtime)).await?;
    let client = PluginClient::new(Client::new(Socket::new(plugin_end)));
    Ok((
        Connection {
            mux,
            _server: std::sync::Mutex::new(server),
        },
        client,
    ))
}

/// A plugin's end: serves `plugin` to the runtime, returns a client of the runtime.
pub async fn plugin_side(
    trunk: UnixStream,
    plugin: Arc<dyn Plugin + Send + Sync>,
) -> ttrpc::Result<(Connection, RuntimeClient)> {
    let (mux, mut ends) = Mux::new(trunk, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let runtime_end = ends.pop().expect("runtime service end");
    let plugin_end = ends.pop().expect("plugin service end");
    let server = serve(plugin_end, create_plugin(plugin)).await?;
    let client = RuntimeClient::new(Client::new(Socket::new(runtime_end)));
    Ok((
        Connection {
            mux,
            _server: std::sync::Mutex::new(server),
        },
        client,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use ttrpc::r#async::TtrpcContext;

    struct P;
    #[async_trait::async_trait]
    impl Plugin for P {
        async fn configure(
            &self,
            _: &TtrpcContext,
            req: api::ConfigureRequest,
        ) -> ttrpc::Result<api::ConfigureResponse> {
            Ok(api::ConfigureResponse {
                events: req.config.len() as i32,
                ..Default::default()
            })
        }
    }
    struct R;
    #[async_trait::async_trait]
    impl Runtime for R {
        async fn register_plugin(
            &self,
            _: &TtrpcContext,
            req: api::RegisterPluginRequest,
        ) -> ttrpc::Result<api::Empty> {
            assert_eq!(req.plugin_name, "x");
            Ok(api::Empty::new())
        }
    }

    #[tokio::test]
    async fn both_services_cross_one_trunk() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_rc, plugin) = runtime_side(a, Arc::new(R)).await.unwrap();
        let (_pc, runtime) = plugin_side(b, Arc::new(P)).await.unwrap();
        let reg = api::RegisterPluginRequest {
            plugin_name: "x".into(),
            ..Default::default()
        };
        runtime
            .register_plugin(ttrpc::context::with_timeout(1_000_000_000), &reg)
            .await
            .unwrap();
        let cfg = api::ConfigureRequest {
            config: "y".repeat(10_000),
            ..Default::default()
        };
        let rpl = plugin
            .configure(ttrpc::context::with_timeout(1_000_000_000), &cfg)
            .await
            .unwrap();
        assert_eq!(rpl.events, 10_000);
    }
}
