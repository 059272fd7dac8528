//! berthd's error type and its one mapping onto gRPC status codes.

/// Every failure in berthd. The variant decides the code kubelet sees; kubelet branches
/// on NotFound and AlreadyExists, so those are never flattened into text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("config: {0}")]
    Config(String),
    #[error("state store: {0}")]
    Store(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A registry refused the credentials (or asked for some): the message names it.
    #[error("{0}")]
    Unauthenticated(String),
    /// A registry could not be reached or answered with an error.
    #[error("{0}")]
    Registry(String),
    /// A CNI plugin or network namespace operation failed (the message names the plugin).
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The one place berthd errors become gRPC statuses.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Registry(_) => Code::Unknown,
            Error::Config(_)
            | Error::Store(_)
            | Error::Io { .. }
            | Error::Network(_)
            | Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_variant_maps_to_its_code() {
        let c = |e: Error| tonic::Status::from(e).code();
        assert_eq!(c(Error::NotFound("x".into())), Code::NotFound);
        assert_eq!(c(Error::AlreadyExists("x".into())), Code::AlreadyExists);
        assert_eq!(c(Error::InvalidArgument("x".into())), Code::InvalidArgument);
        assert_eq!(
            c(Error::FailedPrecondition("x".into())),
            Code::FailedPrecondition
        );
        assert_eq!(c(Error::Unimplemented("x".into())), Code::Unimplemented);
        assert_eq!(c(Error::Store("x".into())), Code::Internal);
        assert_eq!(c(Error::Network("x".into())), Code::Internal);
        assert_eq!(
            c(Error::io("x", std::io::Error::other("y"))),
            Code::Internal
        );
    }

    #[test]
    fn message_is_kept() {
        let s = tonic::Status::from(Error::NotFound("pod \"p\" not found".into()));
        assert_eq!(s.message(), "pod \"p\" not found");
    }
}
