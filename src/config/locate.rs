//! Finds the line of a field path (`routes[0].versions[1].weight`) in YAML text, for error messages.

use yaml_rust2::Event;
use yaml_rust2::parser::Parser;

enum Frame {
    /// In a mapping: the key whose value comes next (None while reading a key), and its line.
    Map {
        key: Option<(String, usize)>,
        reading_key: bool,
    },
    /// In a sequence: the index of the next item.
    Seq { next: usize },
}

/// Line (1-based) of the node at `path`: for a mapping value, the line of its key.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let target = split_path(path);
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    loop {
        let (event, marker) = parser.next_token().ok()?;
        let line = marker.line();
        // Where does this node sit? Push its path segment, check it against the target.
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        );
        if is_node {
            let mut node_line = line;
            let segment = match stack.last_mut() {
                Some(Frame::Map { key, reading_key }) => {
                    if *reading_key {
                        // This node is a key: remember it, the value comes next.
                        if let Event::Scalar(k, ..) = &event {
                            *key = Some((k.clone(), line));
                        }
                        *reading_key = false;
                        continue;
                    }
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
            if let Some(s) = &segment {
                current.push(s.clone());
            }
            if current == target {
                return Some(node_line);
            }
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map {
                    key: None,
                    reading_key: true,
                }),
                Event::SequenceStart(..) => stack.push(Frame::Seq { next: 0 }),
                _ => {
                    if segment.is_some() {
                        current.pop();
                    }
                }
            }
            continue;
        }
        match event {
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                if !stack.is_empty() {
                    current.pop();
                }
            }
            Event::StreamEnd => return None,
            _ => {}
        }
    }
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
}
