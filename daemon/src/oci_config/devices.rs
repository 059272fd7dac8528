//! Device nodes and device-cgroup rules: CRI devices (host path → container path with
//! permissions) and, for privileged containers, every host device. The only I/O is behind
//! [`DeviceLookup`] and [`host_devices`], which callers (and tests) inject.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::workload::Device;
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use super::{clean_abs_path, invalid, oci};
use crate::error::{Error, Result};

/// Resolves a host device path into its node description (type, major, minor, mode, owner).
pub type DeviceLookup = fn(&Path) -> Result<LinuxDevice>;

fn dev_major(rdev: u64) -> i64 {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as i64
}

fn dev_minor(rdev: u64) -> i64 {
    ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as i64
}

/// The default [`DeviceLookup`]: stat(2) of the (symlink-followed) host path.
pub fn device_from_path(path: &Path) -> Result<LinuxDevice> {
    let md =
        std::fs::metadata(path).map_err(|e| invalid(format!("device {}: {e}", path.display())))?;
    let ft = md.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(invalid(format!("{} is not a device node", path.display())));
    };
    oci(LinuxDeviceBuilder::default()
        .path(path)
        .typ(typ)
        .major(dev_major(md.rdev()))
        .minor(dev_minor(md.rdev()))
        .file_mode(md.mode() & 0o7777)
        .uid(md.uid())
        .gid(md.gid())
        .build())
}

/// Every device node under /dev, as containerd's `oci.HostDevices` (skipping pts, shm,
/// mqueue, fd and /dev/console, which the runtime sets up itself).
pub fn host_devices() -> Result<Vec<LinuxDevice>> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<LinuxDevice>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name();
        if ft.is_dir() {
            if matches!(
                name.to_str(),
                Some("pts" | "shm" | "mqueue" | "fd" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                continue;
            }
            walk(&path, out)?;
        } else if (ft.is_char_device() || ft.is_block_device()) && path != Path::new("/dev/console")
        {
            // A node that vanished or cannot be read is skipped, as containerd does.
            if let Ok(d) = device_from_path(&path) {
                out.push(d);
            }
        }
    }
    Ok(())
}

/// The containerd default device-cgroup rule: deny everything (runc then allows its
/// standard set of /dev/null, /dev/zero, … and the pty devices).
pub(crate) fn deny_all() -> Result<LinuxDeviceCgroup> {
    oci(LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build())
}

pub(crate) fn allow_all() -> Result<LinuxDeviceCgroup> {
    oci(LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .access("rwm")
        .build())
}

/// CRI devices → device nodes at their container paths plus one allow rule each.
pub(crate) fn cri_devices(
    devices: &[Device],
    lookup: DeviceLookup,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>)> {
    let mut nodes: Vec<LinuxDevice> = Vec::new();
    let mut rules = Vec::new();
    for d in devices {
        let container_path = clean_abs_path("device container_path", &d.container_path)?;
        let host_path = clean_abs_path("device host_path", &d.host_path)?;
        let access = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(format!(
                "device {:?}: bad permissions {:?} (want a subset of \"rwm\")",
                d.container_path, d.permissions
            )));
        }
        let host = lookup(&host_path)?;
        let mut node = host.clone();
        node.set_path(container_path);
        // A later device on the same container path replaces the earlier one.
        match nodes.iter_mut().find(|n| n.path() == node.path()) {
            Some(n) => *n = node,
            None => nodes.push(node),
        }
        rules.push(oci(LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(host.typ())
            .major(host.major())
            .minor(host.minor())
            .access(access)
            .build())?);
    }
    Ok((nodes, rules))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake lookup: /dev/fuse is c 10:229, /dev/sda b 8:0, anything else is missing.
    pub(crate) fn fake_lookup(p: &Path) -> Result<LinuxDevice> {
        let (typ, major, minor) = match p.to_str() {
            Some("/dev/fuse") => (LinuxDeviceType::C, 10, 229),
            Some("/dev/sda") => (LinuxDeviceType::B, 8, 0),
            _ => return Err(invalid(format!("{} not found", p.display()))),
        };
        oci(LinuxDeviceBuilder::default()
            .path(p)
            .typ(typ)
            .major(major)
            .minor(minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build())
    }

    fn dev(c: &str, h: &str, p: &str) -> Device {
        Device {
            container_path: c.into(),
            host_path: h.into(),
            permissions: p.into(),
        }
    }

    #[test]
    fn rdev_split() {
        // makedev(10, 229) and a large minor
        assert_eq!((dev_major(0x0ae5), dev_minor(0x0ae5)), (10, 229));
        let rdev: u64 = (259 << 8) | (0x12345 & 0xff) | ((0x12345 & !0xff) << 12);
        assert_eq!((dev_major(rdev), dev_minor(rdev)), (259, 0x12345));
    }

    #[test]
    fn cri_devices_table() {
        let (nodes, rules) = cri_devices(
            &[
                dev("/dev/myfuse", "/dev/fuse", "rw"),
                dev("/dev/disk", "/dev/sda", ""),
            ],
            fake_lookup,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].path(), Path::new("/dev/myfuse"));
        assert_eq!((nodes[0].major(), nodes[0].minor()), (10, 229));
        assert_eq!(rules[0].access().as_deref(), Some("rw"));
        assert_eq!(rules[0].typ(), Some(LinuxDeviceType::C));
        assert_eq!(rules[1].access().as_deref(), Some("rwm"));
        assert_eq!(rules[1].typ(), Some(LinuxDeviceType::B));
        assert!(rules.iter().all(|r| r.allow()));
    }

    #[test]
    fn bad_devices_rejected() {
        for (what, d) in [
            ("relative container path", dev("fuse", "/dev/fuse", "rw")),
            (
                "dotdot host path",
                dev("/dev/fuse", "/dev/../dev/fuse", "rw"),
            ),
            ("bad permissions", dev("/dev/fuse", "/dev/fuse", "rwx")),
            ("missing host device", dev("/dev/x", "/dev/nope", "rw")),
        ] {
            assert!(
                matches!(
                    cri_devices(&[d], fake_lookup),
                    Err(Error::InvalidArgument(_))
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn real_lookup_of_dev_null() {
        let d = device_from_path(Path::new("/dev/null")).unwrap();
        assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::C, 1, 3));
        assert!(matches!(
            device_from_path(Path::new("/etc/hostname")),
            Err(Error::InvalidArgument(_))
        ));
    }
}
