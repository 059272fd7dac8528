//! Decoding the CRI log format the shim writes (`<time> <stream> <P|F> <text>` lines).

/// The text of both streams in file order, partial (`P`) lines joined to what follows.
pub fn text(raw: &str) -> String {
    decode(raw, |_| true)
}

/// The text of one stream (`"stdout"` or `"stderr"`), partial lines joined.
pub fn stream(raw: &str, name: &str) -> String {
    decode(raw, |s| s == name)
}

fn decode(raw: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for line in raw.lines() {
        let mut f = line.splitn(4, ' ');
        let (_time, stream, tag) = (f.next(), f.next(), f.next());
        if !keep(stream.unwrap_or("")) {
            continue;
        }
        out.push_str(f.next().unwrap_or(""));
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_join_and_streams_split() {
        let raw = "2024-01-01T00:00:00.1Z stdout P ab\n2024-01-01T00:00:00.2Z stdout F c d\n\
                   2024-01-01T00:00:00.3Z stderr F e\n";
        assert_eq!(text(raw), "abc d\ne\n");
        assert_eq!(stream(raw, "stdout"), "abc d\n");
        assert_eq!(stream(raw, "stderr"), "e\n");
    }
}
