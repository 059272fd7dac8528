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
    /// An operation with a caller-given time limit ran out of it (an ExecSync timeout:
    /// kubelet reports a probe timeout on this code).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("config: {0}")]
    Config(String),
    #[error("state store: {0}")]
    Store(String),
    /// A filesystem berthd writes to is full (ENOSPC, or a quota's EDQUOT): `path` is
    /// where the write failed, `free` what its filesystem has left for berthd.
    #[error("no space left on device: {path}, {free} bytes free")]
    NoSpace { path: String, free: u64 },
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
    /// A registry's answer broke one of berthd's bounds on size or time.
    #[error(transparent)]
    RegistryLimit(#[from] RegistryLimit),
    /// A CNI plugin or network namespace operation failed (the message names the plugin).
    #[error("network: {0}")]
    Network(String),
    /// A file of an image (its /etc/passwd or /etc/group) could not be read safely.
    #[error(transparent)]
    ImageFile(#[from] ImageFileError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why `image::layer_file` refused a file of an image. A file the image does not have is no
/// error (the reader answers None); these are files that exist but must not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// A FIFO, device, socket or directory: reading it could block or never end.
    #[error("the image's /{path} is {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error("the image's /{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// More symlinks than the kernel would follow (e.g. `etc -> /etc`).
    #[error("the image's /{path}: too many levels of symbolic links")]
    TooManyLinks { path: String },
    /// The read did not finish in time (a stalled disk): the image is not at fault.
    #[error("reading the image's /{path} took longer than {after:?}")]
    TimedOut {
        path: String,
        after: std::time::Duration,
    },
    #[error("read the image's /{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a registry's answer broke one of berthd's bounds. Each names the registry (`host`)
/// and what was being fetched (`what`, e.g. "manifest of docker.io/library/busybox:1").
#[derive(Debug, thiserror::Error)]
pub enum RegistryLimit {
    /// A body (by its Content-Length, or by what had arrived) over its cap.
    #[error("{what} from {host} exceeds {}", bytes(*limit))]
    TooLarge {
        host: String,
        what: String,
        limit: u64,
    },
    /// Nothing, or too little, came within `registry.timeout` (`after`); `got` bytes did.
    #[error("{}", stalled(host, what, *got, *after))]
    Stalled {
        host: String,
        what: String,
        got: u64,
        after: std::time::Duration,
    },
}

/// "8 MiB", "1 MiB", "64 KiB", or bytes when not a whole number of either.
fn bytes(n: u64) -> String {
    match n {
        0 => "0 bytes".into(),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

fn stalled(host: &str, what: &str, got: u64, after: std::time::Duration) -> String {
    let secs = after.as_secs_f64();
    if got == 0 {
        format!("registry {host} sent nothing for {what} in {secs} s")
    } else {
        format!("registry {host} sent {what} too slowly: {got} bytes in {secs} s")
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// `io`, for a write under `path`: a full filesystem becomes [`Error::NoSpace`] with
    /// the space left there, so the caller learns which disk to free.
    pub fn io_at(
        context: impl Into<String>,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        if is_no_space(&source) {
            return Error::no_space(path);
        }
        Error::io(context, source)
    }

    /// [`Error::NoSpace`] for `path` (or its nearest existing ancestor), with the bytes
    /// its filesystem has free for an unprivileged writer.
    pub fn no_space(path: &std::path::Path) -> Self {
        let free = path
            .ancestors()
            .find_map(|p| nix::sys::statvfs::statvfs(p).ok())
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0);
        Error::NoSpace {
            path: path.display().to_string(),
            free,
        }
    }

    /// Turns an I/O error that was a full filesystem into [`Error::NoSpace`] at `path`:
    /// for callers that know which filesystem a whole operation wrote to.
    pub fn on_full_fs(self, path: &std::path::Path) -> Self {
        match &self {
            Error::Io { source, .. } if is_no_space(source) => Error::no_space(path),
            _ => self,
        }
    }
}

/// ENOSPC, or EDQUOT (a quota is a full disk for whoever hit it).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

impl Error {
    /// The gRPC code this error is answered with: the one place berthd errors become
    /// gRPC statuses (also how metrics name a failure).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            // A full disk: the call can succeed once space is freed (kubelet retries).
            Error::NoSpace { .. } => Code::ResourceExhausted,
            Error::Io { source, .. } if is_no_space(source) => Code::ResourceExhausted,
            Error::Registry(_) => Code::Unknown,
            // The registry sent more than anything of its kind may be.
            Error::RegistryLimit(RegistryLimit::TooLarge { .. }) => Code::InvalidArgument,
            Error::RegistryLimit(RegistryLimit::Stalled { .. }) => Code::DeadlineExceeded,
            // The image is at fault: retrying the same image cannot help.
            Error::ImageFile(
                ImageFileError::NotRegular { .. }
                | ImageFileError::TooLarge { .. }
                | ImageFileError::TooManyLinks { .. },
            ) => Code::InvalidArgument,
            Error::ImageFile(ImageFileError::TimedOut { .. }) => Code::DeadlineExceeded,
            Error::ImageFile(ImageFileError::Io { .. }) => Code::Internal,
            Error::Config(_)
            | Error::Store(_)
            | Error::Io { .. }
            | Error::Network(_)
            | Error::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
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
        assert_eq!(
            c(Error::DeadlineExceeded("x".into())),
            Code::DeadlineExceeded
        );
        assert_eq!(c(Error::Store("x".into())), Code::Internal);
        assert_eq!(c(Error::Network("x".into())), Code::Internal);
        assert_eq!(
            c(Error::io("x", std::io::Error::other("y"))),
            Code::Internal
        );
    }

    #[test]
    fn image_file_errors_map_to_their_codes() {
        let c = |e: ImageFileError| tonic::Status::from(Error::from(e)).code();
        let path = || "etc/passwd".to_string();
        let fifo = ImageFileError::NotRegular {
            path: path(),
            kind: "a FIFO",
        };
        let s = tonic::Status::from(Error::from(fifo));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "the image's /etc/passwd is a FIFO, not a regular file"
        );
        let big = ImageFileError::TooLarge {
            path: path(),
            limit: 1,
        };
        assert_eq!(c(big), Code::InvalidArgument);
        assert_eq!(
            c(ImageFileError::TooManyLinks { path: path() }),
            Code::InvalidArgument
        );
        let late = ImageFileError::TimedOut {
            path: path(),
            after: std::time::Duration::from_secs(1),
        };
        assert_eq!(c(late), Code::DeadlineExceeded);
        let io = ImageFileError::Io {
            path: path(),
            source: std::io::Error::other("y"),
        };
        assert_eq!(c(io), Code::Internal);
    }

    #[test]
    fn registry_limits_name_what_and_map_to_their_codes() {
        let big = tonic::Status::from(Error::from(RegistryLimit::TooLarge {
            host: "reg:5000".into(),
            what: "manifest of reg:5000/a:1".into(),
            limit: 8 << 20,
        }));
        assert_eq!(big.code(), Code::InvalidArgument);
        assert_eq!(
            big.message(),
            "manifest of reg:5000/a:1 from reg:5000 exceeds 8 MiB"
        );
        let stalled = |got| {
            tonic::Status::from(Error::from(RegistryLimit::Stalled {
                host: "reg:5000".into(),
                what: "blob sha256:ab".into(),
                got,
                after: std::time::Duration::from_secs(30),
            }))
        };
        assert_eq!(stalled(0).code(), Code::DeadlineExceeded);
        assert_eq!(
            stalled(0).message(),
            "registry reg:5000 sent nothing for blob sha256:ab in 30 s"
        );
        assert_eq!(
            stalled(7).message(),
            "registry reg:5000 sent blob sha256:ab too slowly: 7 bytes in 30 s"
        );
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_with_the_space_left() {
        let d = tempfile::tempdir().unwrap();
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = Error::io_at("write blob", &d.path().join("not/yet"), enospc());
        let Error::NoSpace { path, free } = &e else {
            panic!("{e:?}")
        };
        assert!(path.ends_with("not/yet"), "{path}");
        assert!(*free > 0, "statvfs of the existing ancestor");
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().starts_with("no space left on device: ")
                && s.message().ends_with(" bytes free"),
            "{}",
            s.message()
        );
        // Without a known path the code is still right; a known one adds the space.
        let plain = Error::io("write x", enospc());
        assert_eq!(plain.code(), Code::ResourceExhausted);
        assert!(matches!(plain.on_full_fs(d.path()), Error::NoSpace { .. }));
        let other = Error::io("write x", std::io::Error::other("y")).on_full_fs(d.path());
        assert_eq!(other.code(), Code::Internal);
    }

    #[test]
    fn message_is_kept() {
        let s = tonic::Status::from(Error::NotFound("pod \"p\" not found".into()));
        assert_eq!(s.message(), "pod \"p\" not found");
    }
}
