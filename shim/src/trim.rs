//! Keeps the shim's resident set to the code it runs. The kernel maps a file's pages in
//! around every page fault (64 KiB at a time), so after start-up nearly all of the shim's
//! text is mapped into it, while an idle shim runs a small part of it. A few seconds after
//! start and then every minute, the read-only mappings of the shim's own executable that
//! hold no private page are dropped from its page tables (`madvise(MADV_DONTNEED)`): the
//! pages stay in the page cache, shared with every other shim, and whatever runs next
//! faults its pages back in. The allocator's free heap pages are handed back at the same
//! times (`malloc_trim`).

use std::path::Path;
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(3);
const EVERY: Duration = Duration::from_secs(60);

/// Trims now and then, forever (aborted with the daemon).
pub async fn run() {
    let mut wait = FIRST;
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        // Reads /proc/self/smaps: off the async workers.
        match tokio::task::spawn_blocking(trim_once).await {
            Ok(Ok(bytes)) => tracing::debug!(bytes, "executable's pages unmapped"),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "trimming the resident set; not trying again");
                return;
            }
            Err(_) => return,
        }
    }
}

/// One mapping of `/proc/self/smaps`: its range, permissions, file and private pages.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    anonymous_kb: u64,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let perms = f.next().unwrap_or_default().to_string();
                let path = f.nth(3).unwrap_or_default().to_string();
                out.push(Mapping {
                    start,
                    end,
                    perms,
                    path,
                    // Unknown until its Anonymous line: counted as private, never trimmed.
                    anonymous_kb: u64::MAX,
                });
                continue;
            }
        }
        if first == "Anonymous:" {
            if let (Some(m), Some(kb)) = (out.last_mut(), f.next().and_then(|v| v.parse().ok())) {
                m.anonymous_kb = kb;
            }
        }
    }
    out
}

/// The mappings that may be dropped: the executable's, read-only (never writable, so
/// never changed after it was mapped) and with no private (copied-on-write) page, so the
/// page cache holds exactly what they show.
fn trimmable<'a>(maps: &'a [Mapping], exe: &'a str) -> impl Iterator<Item = &'a Mapping> {
    maps.iter().filter(move |m| {
        m.path == exe && (m.perms == "r-xp" || m.perms == "r--p") && m.anonymous_kb == 0
    })
}

fn trim_once() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = parse_smaps(&std::fs::read_to_string(Path::new("/proc/self/smaps"))?);
    let mut bytes = 0;
    // Freed heap pages go back to the kernel too: glibc keeps the free chunks between
    // live ones (start-up's parsing, a stats call's buffers) resident until trimmed.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    for m in trimmable(&maps, &exe) {
        // SAFETY: a read-only private file mapping without private pages: dropping its
        // page table entries loses nothing, the next access maps the same file page
        // again. The range is the kernel's own (page aligned) for a mapping that stays
        // for the life of the process.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        bytes += m.end - m.start;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
00200000-00293000 r--p 00000000 fe:00 123 /usr/bin/shim
Rss:                 384 kB
Anonymous:             0 kB
00293000-00442000 r-xp 00092000 fe:00 123 /usr/bin/shim
Anonymous:             0 kB
00442000-00447000 r--p 00240000 fe:00 123 /usr/bin/shim
Anonymous:            20 kB
00447000-0044c000 rw-p 00244000 fe:00 123 /usr/bin/shim
Anonymous:             8 kB
0044c000-00452000 rw-p 00000000 00:00 0
Anonymous:            12 kB
7f0000000000-7f0000001000 r-xp 00000000 fe:00 9 /usr/lib/other.so
Anonymous:             0 kB
";

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_trimmed() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 6);
        let t: Vec<(usize, &str)> = trimmable(&maps, "/usr/bin/shim")
            .map(|m| (m.start, m.perms.as_str()))
            .collect();
        // Not the relocated read-only data (private pages), not the writable data, not
        // the anonymous mapping, not another file's.
        assert_eq!(t, [(0x200000, "r--p"), (0x293000, "r-xp")]);
    }

    #[test]
    fn a_mapping_whose_anonymous_line_is_missing_is_left_alone() {
        let maps = parse_smaps("00200000-00293000 r--p 00000000 fe:00 123 /usr/bin/shim\n");
        assert_eq!(trimmable(&maps, "/usr/bin/shim").count(), 0);
    }

    #[test]
    fn trimming_this_test_process_keeps_it_running() {
        // The test binary's own text is dropped and faulted back in as it runs on.
        let bytes = trim_once().unwrap();
        assert!(bytes > 0);
        assert_eq!(parse_smaps(SMAPS).len(), 6);
    }
}
