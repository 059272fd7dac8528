//! A CRI v1 client (runtime and image services over a unix socket, berthd's or any other
//! runtime's), with what berthctl and the black-box tests share: short forms of the calls
//! (`calls`), the CRI log format's decoder (`log`) and a WebSocket client for the
//! streaming server's remote commands (`ws`). Written against the protocol, apart from
//! berthd's server side (it imports nothing of the daemon), so each checks the other.

pub mod calls;
pub mod connect;
pub mod log;
pub mod ws;

pub use berth_cri::v1::image_service_client::ImageServiceClient;
pub use berth_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use calls::{Answer, CriCalls};
pub use connect::{connect, connect_endpoint, socket_path, Is, Rs, CALL_TIMEOUT};
