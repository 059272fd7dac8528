//! Loop devices for `loop` mounts: containerd 2.x's erofs and blockfile snapshotters hand
//! the shim an image file to mount. A free device comes from `/dev/loop-control`, is bound
//! to the file with autoclear, and the kernel frees it when the last mount of it goes, so
//! unmounting the rootfs is all the cleanup there is (as containerd's `setupLoop`).
//!
//! Hand-written: the loop-device crates generate their bindings with bindgen (libclang at
//! build time) for three ioctls and one struct.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::error::{Error, Result};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;
/// Another process may take the free device between GET_FREE and SET_FD; try again.
const ATTEMPTS: usize = 100;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; LO_NAME_SIZE],
    crypt_name: [u8; LO_NAME_SIZE],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// How the device is set up (containerd's `LoopParams`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    pub readonly: bool,
    pub direct_io: bool,
}

/// A bound loop device. Keep it open until the mount is made: with autoclear, closing the
/// last reference before the mount would free the device again.
pub struct Loop {
    pub path: PathBuf,
    _dev: File,
}

/// Binds `backing` to a free loop device.
pub fn attach(backing: &str, params: Params) -> Result<Loop> {
    let open = |p: &str| {
        OpenOptions::new()
            .read(true)
            .write(!params.readonly)
            .open(p)
    };
    let file =
        open(backing).map_err(|e| Error::io(format!("open loop backing file {backing}"), e))?;
    let ctl =
        File::open("/dev/loop-control").map_err(|e| Error::io("open /dev/loop-control", e))?;
    for _ in 0..ATTEMPTS {
        // SAFETY: an ioctl without arguments on a fd we own.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(Error::io(
                "find a free loop device",
                std::io::Error::last_os_error(),
            ));
        }
        let path = format!("/dev/loop{n}");
        let dev = open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        // SAFETY: LOOP_SET_FD takes the backing fd by value; both fds are open.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(Error::io(format!("bind {backing} to {path}"), e));
        }
        let mut info = LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            sizelimit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_AUTOCLEAR,
            file_name: [0; LO_NAME_SIZE],
            crypt_name: [0; LO_NAME_SIZE],
            encrypt_key: [0; 32],
            init: [0; 2],
        };
        if params.readonly {
            info.flags |= LO_FLAGS_READ_ONLY;
        }
        if params.direct_io {
            info.flags |= LO_FLAGS_DIRECT_IO;
        }
        let name = backing.as_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.file_name[..n].copy_from_slice(&name[..n]);
        // SAFETY: `info` is a valid `loop_info64` that outlives the call.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64 as _, &info) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: unbinds the device we just bound, so nothing stays attached.
            unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
            return Err(Error::io(format!("configure {path}"), e));
        }
        return Ok(Loop {
            path: PathBuf::from(path),
            _dev: dev,
        });
    }
    Err(Error::State(format!(
        "no free loop device for {backing} after {ATTEMPTS} attempts"
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_info64_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
    }
}
