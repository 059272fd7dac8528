//! The CRI container log format (`<RFC 3339 time> <stdout|stderr> <P|F> <text>` lines, as
//! the shim and every CRI runtime write them): one line parsed, or a whole log decoded,
//! partial (`P`) lines joined to what follows.

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub time: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A `P` line: the text goes on in the next line of the same stream (no newline).
    pub partial: bool,
    pub text: &'a str,
}

impl Line<'_> {
    /// The text as written by the container: with its newline unless partial.
    pub fn written(&self) -> String {
        if self.partial {
            self.text.to_string()
        } else {
            format!("{}\n", self.text)
        }
    }
}

/// Parses one line (without its newline); None when it has fewer than the three leading
/// fields or a tag other than P or F.
pub fn parse(line: &str) -> Option<Line<'_>> {
    let mut f = line.splitn(4, ' ');
    let (time, stream, tag) = (f.next()?, f.next()?, f.next()?);
    let partial = match tag {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some(Line {
        time,
        stream,
        partial,
        text: f.next().unwrap_or(""),
    })
}

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
    for l in raw.lines().filter_map(parse) {
        if keep(l.stream) {
            out.push_str(&l.written());
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

    #[test]
    fn a_line_is_parsed_or_refused() {
        let l = parse("2024-01-01T00:00:00.1Z stderr F").unwrap();
        assert_eq!((l.stream, l.partial, l.text), ("stderr", false, ""));
        assert_eq!(parse("2024 stdout X text"), None);
        assert_eq!(parse("garbage"), None);
    }
}
