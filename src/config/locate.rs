//! Finds the line of a field path (`routes[0].versions[1].weight`) in YAML text, for error messages.

use yaml_rust2::Event;
use yaml_rust2::parser::Parser;

/// One node of the document: its path, its text when it is a scalar, and its line (for a
/// mapping value, the line of its key).
struct Node {
    path: Vec<String>,
    scalar: Option<String>,
    line: usize,
}

enum Frame {
    Map {
        key: Option<(String, usize)>,
        reading_key: bool,
    },
    Seq {
        next: usize,
    },
}

/// Every node of the first document, in order. Stops quietly at a syntax error.
fn nodes(text: &str) -> Vec<Node> {
    let mut out = Vec::new();
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    while let Ok((event, marker)) = parser.next_token() {
        let line = marker.line();
        match event {
            Event::Scalar(..)
            | Event::SequenceStart(..)
            | Event::MappingStart(..)
            | Event::Alias(_) => {
                let mut node_line = line;
                let segment = match stack.last_mut() {
                    Some(Frame::Map { key, reading_key }) if *reading_key => {
                        // This node is a key: remember it, the value comes next.
                        if let Event::Scalar(k, ..) = &event {
                            *key = Some((k.clone(), line));
                        }
                        *reading_key = false;
                        continue;
                    }
                    Some(Frame::Map { key, reading_key }) => {
                        *reading_key = true;
                        key.take().map(|(k, key_line)| {
                            node_line = key_line;
                            k
                        })
                    }
                    Some(Frame::Seq { next }) => {
                        *next += 1;
                        Some(format!("[{}]", *next - 1))
                    }
                    None => None,
                };
                let pushed = segment.is_some();
                if let Some(s) = segment {
                    current.push(s);
                }
                let scalar = match &event {
                    Event::Scalar(v, ..) => Some(v.clone()),
                    _ => None,
                };
                out.push(Node {
                    path: current.clone(),
                    scalar,
                    line: node_line,
                });
                match event {
                    Event::MappingStart(..) => stack.push(Frame::Map {
                        key: None,
                        reading_key: true,
                    }),
                    Event::SequenceStart(..) => stack.push(Frame::Seq { next: 0 }),
                    _ if pushed => {
                        current.pop();
                    }
                    _ => {}
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                if !stack.is_empty() {
                    current.pop();
                }
            }
            Event::StreamEnd | Event::DocumentEnd => break,
            _ => {}
        }
    }
    out
}

/// Line (1-based) of the node at `path`: for a mapping value, the line of its key.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let target = split_path(path);
    nodes(text)
        .into_iter()
        .find(|n| n.path == target)
        .map(|n| n.line)
}

/// The node under `parent` whose scalar text is `value`, the shallowest first (a direct
/// child, or an item of a list the parent holds): its path and line. Used to point at the
/// exact field when an error names only the enclosing mapping.
pub fn child_with_value(text: &str, parent: &str, value: &str) -> Option<(String, usize)> {
    let parent = split_path(parent);
    nodes(text)
        .into_iter()
        .filter(|n| {
            n.path.len() > parent.len()
                && n.path.starts_with(&parent)
                && n.scalar.as_deref() == Some(value)
        })
        .min_by_key(|n| n.path.len())
        .map(|n| (join_path(&n.path), n.line))
}

/// `routes[0].versions` -> ["routes", "[0]", "versions"].
fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(rest[..i].to_string());
            }
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                out.push(rest[..=end].to_string());
                rest = &rest[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

fn join_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if !out.is_empty() && !s.starts_with('[') {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a: 1\nroutes:\n  - name: x\n    versions:\n      - name: s\n        weight: 5\n      - {name: c, weight: 7}\nlimits:\n  max: 3\n";

    #[test]
    fn finds_keys_and_items() {
        assert_eq!(line_of(TEXT, "a"), Some(1));
        assert_eq!(line_of(TEXT, "routes[0].versions"), Some(4));
        assert_eq!(line_of(TEXT, "routes[0].versions[0].weight"), Some(6));
        assert_eq!(line_of(TEXT, "routes[0].versions[1].weight"), Some(7));
        assert_eq!(line_of(TEXT, "limits.max"), Some(9));
        assert_eq!(line_of(TEXT, "routes[3]"), None);
    }

    #[test]
    fn finds_the_child_holding_a_value() {
        assert_eq!(
            child_with_value(TEXT, "routes[0].versions[0]", "5"),
            Some(("routes[0].versions[0].weight".into(), 6))
        );
        assert_eq!(
            child_with_value(TEXT, "limits", "3"),
            Some(("limits.max".into(), 9))
        );
        assert_eq!(child_with_value(TEXT, "", "1"), Some(("a".into(), 1)));
        assert_eq!(
            child_with_value(TEXT, "routes[0]", "7"),
            Some(("routes[0].versions[1].weight".into(), 7)),
            "deeper when no direct child holds it"
        );
        assert_eq!(child_with_value(TEXT, "limits", "4"), None);
    }
}
