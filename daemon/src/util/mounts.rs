//! The mount table (`/proc/self/mountinfo`): who is mounted where, and lazy unmounts
//! of everything below a directory.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of mountinfo: the mount point, its optional fields ("shared:N",
/// "master:N") and its filesystem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub point: PathBuf,
    pub optional: String,
    pub fstype: String,
}

/// Mount points are octal-escaped in mountinfo (space, tab, newline, backslash).
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn parse(info: &str) -> Vec<MountEntry> {
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                point: PathBuf::from(unescape(f.get(4)?)),
                optional: f.get(6..sep)?.join(" "),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

fn table() -> Result<Vec<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read mountinfo", e))?;
    Ok(parse(&info))
}

/// The mount holding `path`: the longest mount point that is a prefix of it (the last
/// one mounted there when several are stacked).
pub fn mount_of(path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for m in table().ok()? {
        if path.starts_with(&m.point)
            && best
                .as_ref()
                .is_none_or(|b| m.point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// Lazily unmounts everything mounted at or below `dir` (deepest first).
pub fn unmount_under(dir: &Path) -> Result<()> {
    let mut points: Vec<PathBuf> = table()?
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes_and_optional_fields() {
        let info =
            "36 35 98:0 /mnt1 /mnt\\040dir rw,noatime master:1 shared:2 - ext3 /dev/root rw\n\
                    25 1 0:22 / /run rw - tmpfs tmpfs rw\n";
        let t = parse(info);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].point, PathBuf::from("/mnt dir"));
        assert_eq!(t[0].optional, "master:1 shared:2");
        assert_eq!(t[0].fstype, "ext3");
        assert_eq!(t[1].optional, "");
        assert_eq!(t[1].fstype, "tmpfs");
    }

    #[test]
    fn the_root_holds_every_path() {
        let m = mount_of(Path::new("/definitely/not/mounted/here")).unwrap();
        assert!(Path::new("/definitely").starts_with(&m.point));
    }
}
