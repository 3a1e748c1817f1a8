//! A server-sent events parser (the `text/event-stream` format of the WHATWG HTML spec, §9.2):
//! bytes in, whole events out. Lines end with LF, CRLF or CR; `data` lines are joined with LF;
//! comments (`:` lines, the coordinator's keep-alives) are ignored; a blank line ends an event.

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event` field; "message" when absent.
    pub event: String,
    pub data: String,
    /// The `id` field, if this event carried one (resume with `Last-Event-ID`).
    pub id: Option<String>,
}

/// Incremental parser: feed chunks as they arrive, take the completed events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A CR ended the last chunk: an LF opening the next one belongs to it.
    pending_cr: bool,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `chunk` and returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.pending_cr => self.pending_cr = false,
                b'\n' | b'\r' => {
                    self.pending_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    self.line(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => {
                    self.pending_cr = false;
                    self.buf.push(b);
                }
            }
        }
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() || self.event.is_some() {
                out.push(SseEvent {
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data: std::mem::take(&mut self.data).join("\n"),
                    id: self.id.take(),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::new();
        let stream = b": keep-alive\n\nevent: progress\nid: 1-0\ndata: {\"step\":3}\n\nevent: job\ndata: a\ndata: b\n\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(5) {
            events.extend(p.feed(chunk));
        }
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "progress".into(),
                    data: "{\"step\":3}".into(),
                    id: Some("1-0".into())
                },
                SseEvent {
                    event: "job".into(),
                    data: "a\nb".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn crlf_and_cr_line_endings() {
        let mut p = SseParser::new();
        let mut events = p.feed(b"event: state\r");
        events.extend(p.feed(b"\ndata: x\r\n\r\n"));
        events.extend(p.feed(b"data:y\r\r"));
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].event, "state");
        assert_eq!(events[0].data, "x");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].data, "y");
    }
}
