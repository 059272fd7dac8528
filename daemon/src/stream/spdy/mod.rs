//! SPDY/3.1: the framing (`frame`) and a server-side session over an upgraded
//! connection (`conn`).

pub mod conn;
pub mod frame;
