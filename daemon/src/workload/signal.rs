//! Stop signals by name: what an image's `StopSignal` or kubelet's `stop_signal` says
//! ("SIGUSR1", "USR1", "10", "SIGRTMIN+3") as a signal number, and a number as its
//! canonical name, the form records keep.

use nix::sys::signal::Signal;

/// The signal `name` stands for, None when it names none (or a number out of range).
pub fn number(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return realtime(libc::SIGRTMIN(), rest, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return realtime(libc::SIGRTMAX(), rest, -1);
    }
    // Linux's aliases, which kubelet's list names too.
    let bare = match bare {
        "CLD" => "CHLD",
        "POLL" => "IO",
        "IOT" => "ABRT",
        b => b,
    };
    format!("SIG{bare}")
        .parse::<Signal>()
        .ok()
        .map(|s| s as i32)
}

/// "" (the base itself) or "+k"/"-k" (in `dir`'s direction), inside the real-time range.
fn realtime(base: i32, rest: &str, dir: i32) -> Option<i32> {
    let k = match rest {
        "" => 0,
        r => {
            let (sign, digits) = r.split_at(1);
            if (sign == "+") != (dir > 0) || (sign != "+" && sign != "-") {
                return None;
            }
            digits.parse::<i32>().ok()?
        }
    };
    let n = base + dir * k;
    (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .contains(&n)
        .then_some(n)
}

/// The canonical name of signal `n` ("SIGTERM", "SIGRTMIN+3"), None when out of range.
pub fn name(n: i32) -> Option<String> {
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&n) {
        // As kubelet's names: counted up from RTMIN for the lower half, down from RTMAX above.
        return Some(match n - min {
            0 => "SIGRTMIN".to_string(),
            k if n <= max - 15 => format!("SIGRTMIN+{k}"),
            _ if n == max => "SIGRTMAX".to_string(),
            _ => format!("SIGRTMAX-{}", max - n),
        });
    }
    Signal::try_from(n).ok().map(|s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_go_both_ways() {
        assert_eq!(number("SIGTERM"), Some(15));
        assert_eq!(number("TERM"), Some(15));
        assert_eq!(number("9"), Some(9));
        assert_eq!(number("SIGUSR1"), Some(10));
        assert_eq!(number("SIGPWR"), Some(30));
        assert_eq!(number("SIGCLD"), Some(17));
        assert_eq!(number("SIGIOT"), Some(6));
        let min = libc::SIGRTMIN();
        assert_eq!(number("SIGRTMIN"), Some(min));
        assert_eq!(number("SIGRTMIN+3"), Some(min + 3));
        assert_eq!(number("SIGRTMAX-2"), Some(libc::SIGRTMAX() - 2));
        for bad in [
            "SIGNOPE",
            "",
            "0",
            "65",
            "SIGRTMIN-1",
            "SIGRTMAX+1",
            "SIGRTMIN+99",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
        for n in 1..=libc::SIGRTMAX() {
            if let Some(name) = name(n) {
                assert_eq!(number(&name), Some(n), "{name}");
            }
        }
        assert_eq!(name(15).as_deref(), Some("SIGTERM"));
        assert_eq!(name(min + 1).as_deref(), Some("SIGRTMIN+1"));
        assert_eq!(name(libc::SIGRTMAX() - 1).as_deref(), Some("SIGRTMAX-1"));
    }
}
