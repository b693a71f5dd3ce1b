//! Where each field of the YAML file is: a path (`services[0].load_balancers[1].zone`) →
//! line and column, so semantic errors can point at the line they are about.
//!
//! serde_yaml reports positions only for its own (syntax and type) errors; this index is
//! built from the event stream of a second, position-aware parser (saphyr-parser).

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// A position in the file (1-based line and column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Where a value is in the text, in bytes; for mappings, also whether they are written
/// in flow style (`{ a: 1 }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub flow: bool,
}

#[derive(Debug, Default)]
pub struct Lines {
    positions: HashMap<String, Position>,
    spans: HashMap<String, Span>,
}

enum Frame {
    Mapping {
        path: String,
        key: Option<String>,
        start: usize,
    },
    Sequence {
        path: String,
        next: usize,
    },
}

impl Lines {
    /// Indexes `text`. A file that does not parse yields what was indexed up to the
    /// error (serde_yaml reports the syntax error itself).
    pub fn index(text: &str) -> Self {
        let mut positions = HashMap::new();
        let mut spans = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        // The parser counts characters; slicing needs bytes.
        let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let byte = |chars: usize| offsets.get(chars).copied().unwrap_or(text.len());
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let position = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::MappingEnd => {
                    if let Some(Frame::Mapping { path, start, .. }) = stack.pop() {
                        let end = byte(span.end.index());
                        let flow = text[start..].starts_with('{');
                        spans.insert(path, Span { start, end, flow });
                    }
                    continue;
                }
                Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let path = match stack.last_mut() {
                None => String::new(),
                // A key: its position stands for the field.
                Some(Frame::Mapping {
                    path,
                    key: key @ None,
                    ..
                }) => {
                    let name = match &event {
                        Event::Scalar(name, ..) => name.to_string(),
                        _ => "?".to_string(),
                    };
                    positions.insert(join(path, &name), position);
                    *key = Some(name);
                    continue;
                }
                Some(Frame::Mapping { path, key, .. }) => {
                    join(path, &key.take().unwrap_or_default())
                }
                Some(Frame::Sequence { path, next }) => {
                    let item = format!("{path}[{next}]");
                    *next += 1;
                    positions.insert(item.clone(), position);
                    item
                }
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Mapping {
                    path,
                    key: None,
                    start: byte(span.start.index()),
                }),
                Event::SequenceStart(..) => stack.push(Frame::Sequence { path, next: 0 }),
                Event::Scalar(..) => {
                    let (start, end) = (byte(span.start.index()), byte(span.end.index()));
                    spans.insert(
                        path,
                        Span {
                            start,
                            end,
                            flow: false,
                        },
                    );
                }
                _ => {}
            }
        }
        Self { positions, spans }
    }

    /// Where the value at `path` (a scalar or a mapping) is in the text.
    pub fn span(&self, path: &str) -> Option<Span> {
        self.spans.get(path).copied()
    }

    /// The position of `path`, or of its closest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.positions.get(path) {
                return Some(*position);
            }
            path = parent(path)?;
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
node:
  interfaces:
    - name: a
      role: consumer
services:
  - name: s
    load_balancers:
      - zone: z
        listeners: [{ port: 80 }]
";

    fn line(path: &str) -> usize {
        Lines::index(TEXT).find(path).unwrap().line
    }

    #[test]
    fn fields_and_items_have_their_lines() {
        assert_eq!(line("node"), 1);
        assert_eq!(line("node.interfaces[0]"), 3);
        assert_eq!(line("node.interfaces[0].role"), 4);
        assert_eq!(line("services[0].name"), 6);
        assert_eq!(line("services[0].load_balancers[0].zone"), 8);
        assert_eq!(line("services[0].load_balancers[0].listeners[0].port"), 9);
    }

    #[test]
    fn missing_fields_point_at_their_parent() {
        assert_eq!(line("node.interfaces[0].consumer_network"), 3);
        assert_eq!(line("services[0].load_balancers[0].name"), 8);
    }

    #[test]
    fn values_have_spans_and_mappings_know_their_style() {
        let lines = Lines::index(TEXT);
        let role = lines.span("node.interfaces[0].role").unwrap();
        assert_eq!(&TEXT[role.start..role.end], "consumer");
        let flow = lines
            .span("services[0].load_balancers[0].listeners[0]")
            .unwrap();
        assert!(flow.flow);
        assert_eq!(&TEXT[flow.start..flow.end], "{ port: 80 }");
        assert!(!lines.span("node.interfaces[0]").unwrap().flow);
    }

    #[test]
    fn columns_are_one_based() {
        let lines = Lines::index(TEXT);
        assert_eq!(lines.find("node.interfaces[0].role").unwrap().column, 7);
    }
}
