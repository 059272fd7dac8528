//! What containerd writes on `start`'s stdin: a legacy options `Any` (1.6–2.2) or a 2.3
//! `BootstrapParams` carrying the options as an extension.

use berth_proto::bootstrap_api::BootstrapParams;
use berth_proto::protobuf::well_known_types::any::Any;
use berth_proto::protobuf::{CodedInputStream, Message};

use crate::error::{Error, Result};

/// The decoded start input.
#[derive(Debug, Default)]
pub struct StartInput {
    /// The runtime options, if any were sent.
    pub options: Option<Any>,
    /// `BootstrapParams.socket_dir` (2.3+), when set.
    pub socket_dir: Option<String>,
}

/// True when the bytes carry any field numbered 3 or more at the top level. A legacy `Any`
/// only has fields 1 and 2; containerd's `BootstrapParams` always carries fields 4–7.
fn has_high_fields(buf: &[u8]) -> bool {
    let mut is = CodedInputStream::from_bytes(buf);
    while let Ok(Some(tag)) = is.read_raw_tag_or_eof() {
        if tag >> 3 >= 3 {
            return true;
        }
        let wire = tag & 7;
        let ok = match wire {
            0 => is.read_raw_varint64().is_ok(),
            1 => is.read_fixed64().is_ok(),
            2 => is
                .read_raw_varint32()
                .and_then(|n| is.skip_raw_bytes(n))
                .is_ok(),
            5 => is.read_fixed32().is_ok(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    false
}

/// Decodes `start`'s stdin (possibly empty).
pub fn decode(buf: &[u8]) -> Result<StartInput> {
    if buf.is_empty() {
        return Ok(StartInput::default());
    }
    if has_high_fields(buf) {
        let p = BootstrapParams::parse_from_bytes(buf)
            .map_err(|e| Error::proto("decode BootstrapParams", e))?;
        let options = p
            .extensions
            .iter()
            .filter_map(|x| x.value.as_ref())
            .find(|a| {
                a.type_url.ends_with("containerd.runc.v1.Options")
                    || a.type_url.ends_with("runtimeoptions.v1.Options")
            })
            .cloned();
        let socket_dir = p.socket_dir.filter(|s| !s.is_empty());
        return Ok(StartInput {
            options,
            socket_dir,
        });
    }
    let a = Any::parse_from_bytes(buf).map_err(|e| Error::proto("decode options Any", e))?;
    Ok(StartInput {
        options: (!a.type_url.is_empty()).then_some(a),
        socket_dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::bootstrap_api::Extension;
    use berth_proto::shim::oci;

    fn runc_any() -> Any {
        let mut o = oci::Options::new();
        o.binary_name = "crun".into();
        let mut a = Any::new();
        a.type_url = "containerd.runc.v1.Options".into();
        a.value = o.write_to_bytes().unwrap();
        a
    }

    #[test]
    fn empty_means_no_options() {
        assert!(decode(&[]).unwrap().options.is_none());
    }

    #[test]
    fn legacy_any() {
        let a = runc_any();
        let got = decode(&a.write_to_bytes().unwrap()).unwrap();
        assert_eq!(got.options.unwrap().type_url, "containerd.runc.v1.Options");
    }

    #[test]
    fn bootstrap_params_23() {
        let mut p = BootstrapParams::new();
        p.instance_id = "id".into();
        p.namespace = "default".into();
        p.containerd_version = "2.3.4".into();
        p.containerd_ttrpc_address = "/run/containerd/containerd.sock.ttrpc".into();
        p.containerd_grpc_address = "/run/containerd/containerd.sock".into();
        p.containerd_binary = "/usr/bin/containerd".into();
        p.socket_dir = Some("/run/x/s".into());
        let mut ext = Extension::new();
        ext.value = Some(runc_any()).into();
        p.extensions.push(ext);
        let got = decode(&p.write_to_bytes().unwrap()).unwrap();
        let o = got.options.unwrap();
        assert_eq!(o.type_url, "containerd.runc.v1.Options");
        assert_eq!(
            oci::Options::parse_from_bytes(&o.value)
                .unwrap()
                .binary_name,
            "crun"
        );
        assert_eq!(got.socket_dir.as_deref(), Some("/run/x/s"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
