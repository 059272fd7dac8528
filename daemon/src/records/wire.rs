//! How a CRI message inside a record is stored: its protobuf wire form (base64 in the
//! record's JSON), the encoding the CRI API keeps compatible across versions, as
//! containerd keeps CRI configs in its metadata. The generated crate's serde derive,
//! which the first record format used, changes with the crate.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn serialize<T: prost::Message, S: Serializer>(msg: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(msg.encode_to_vec()))
}

pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: prost::Message + Default,
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    let bytes = B64.decode(text).map_err(serde::de::Error::custom)?;
    T::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
}

/// A CRI message as a record holds it (the JSON string value).
pub fn encode<T: prost::Message>(msg: &T) -> String {
    B64.encode(msg.encode_to_vec())
}
