//! NRI (Node Resource Interface) for Berth: the protocol of containerd/nri **v0.12.1**.
//!
//! * [`api`]: the messages of NRI's `pkg/api/api.proto` (package `nri.pkg.api.v1alpha1`),
//!   generated at build time by ttrpc-codegen;
//! * [`api_ttrpc`]: the two ttrpc services over them: `Plugin` (served by a plugin,
//!   called by the runtime) and `Runtime` (served by the runtime: RegisterPlugin,
//!   UpdateContainers);
//! * [`mux`]: NRI's multiplexer (`pkg/net/multiplex`): one unix connection carrying
//!   both services as two logical connections, so either end can be the client of one
//!   and the server of the other.
//!
//! berthd uses it as the runtime side; the test crate's plugins as the plugin side.

#[allow(
    clippy::all,
    unused_mut,
    unused_qualifications,
    unused_imports,
    missing_docs,
    unused_attributes,
    nonstandard_style,
    deprecated
)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/api.rs"));
}

#[allow(
    clippy::all,
    unused_mut,
    unused_qualifications,
    unused_imports,
    missing_docs,
    unused_attributes,
    nonstandard_style
)]
pub mod api_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/api_ttrpc.rs"));
}

pub mod conn;
pub mod mux;

pub use protobuf;
pub use ttrpc;

/// The NRI version these bindings implement (the `NRI_version` berthd reports).
pub const NRI_VERSION: &str = "v0.12.1";
/// The ttrpc service name of the plugin side.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The ttrpc service name of the runtime side.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// NRI's default socket for external plugins.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// The environment of a plugin the runtime launches: its name, index and the fd of its
/// pre-connected socket.
pub const PLUGIN_NAME_ENV: &str = "NRI_PLUGIN_NAME";
pub const PLUGIN_IDX_ENV: &str = "NRI_PLUGIN_IDX";
pub const PLUGIN_SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";

/// An event's bit in a subscription mask (`ConfigureResponse.events`): bit `e - 1`.
pub fn event_bit(e: api::Event) -> i32 {
    1 << ((e as i32) - 1)
}

/// Every event a plugin can subscribe to (NRI's `ValidEvents`), the subscription of a
/// plugin that names none.
pub fn valid_events() -> i32 {
    (1 << ((api::Event::LAST as i32) - 1)) - 1
}

/// A plugin's full name, `IDX-NAME` (the order plugins are called in is IDX's).
pub fn plugin_name(idx: &str, name: &str) -> String {
    format!("{idx}-{name}")
}

/// Checks a plugin index: exactly two digits (NRI's `CheckPluginIndex`).
pub fn check_plugin_index(idx: &str) -> Result<(), String> {
    if idx.len() != 2 || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid plugin index {idx:?}, must be 2 digits"));
    }
    Ok(())
}

/// Checks a plugin name: not empty, only `[a-zA-Z0-9_.+-]` (NRI's `CheckPluginName`).
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("invalid plugin name: name is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
    {
        return Err(format!(
            "invalid plugin name {name:?}: contains invalid character {c:?}"
        ));
    }
    Ok(())
}

/// Splits a pre-installed plugin's file name `IDX-NAME` (NRI's `ParsePluginName`).
pub fn parse_plugin_name(file: &str) -> Result<(String, String), String> {
    let Some((idx, name)) = file.split_once('-') else {
        return Err(format!(
            "invalid plugin name {file:?}, idx-pluginname expected"
        ));
    };
    check_plugin_index(idx)?;
    Ok((idx.to_string(), name.to_string()))
}
