//! The shim's one error type and its single mapping onto ttrpc status codes.

use berth_proto::ttrpc::{self, Code};

/// Every failure inside the shim. The variant decides the status code containerd sees;
/// containerd and CRI branch on NotFound, AlreadyExists, FailedPrecondition and
/// Unimplemented, so those are never flattened into text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    /// A lifecycle rule was broken ("cannot start a running process"): code Unknown, as
    /// the Go shim does; containerd does not branch on it.
    #[error("{0}")]
    State(String),
    /// The OCI runtime (runc/crun) failed; the message carries its last logged error.
    #[error("{0}")]
    Runtime(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Proto {
        context: String,
        #[source]
        source: berth_proto::protobuf::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }
    pub fn proto(context: impl Into<String>, source: berth_proto::protobuf::Error) -> Self {
        Error::Proto {
            context: context.into(),
            source,
        }
    }
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// The ttrpc status code containerd sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::State(_)
            | Error::Runtime(_)
            | Error::Io { .. }
            | Error::Sys { .. }
            | Error::Proto { .. }
            | Error::Json { .. } => Code::UNKNOWN,
        }
    }
}

/// The one place where shim errors become wire statuses.
impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn each_variant_maps_to_its_code() {
        assert_eq!(code_of(Error::NotFound("x".into())), Code::NOT_FOUND);
        assert_eq!(
            code_of(Error::AlreadyExists("x".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(Error::FailedPrecondition("x".into())),
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            code_of(Error::InvalidArgument("x".into())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(Error::Unimplemented("x".into())),
            Code::UNIMPLEMENTED
        );
        assert_eq!(code_of(Error::State("x".into())), Code::UNKNOWN);
        assert_eq!(code_of(Error::Runtime("x".into())), Code::UNKNOWN);
        assert_eq!(
            code_of(Error::io("ctx", std::io::Error::other("boom"))),
            Code::UNKNOWN
        );
    }

    #[test]
    fn message_is_kept() {
        match ttrpc::Error::from(Error::NotFound("container not created".into())) {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.message(), "container not created"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
