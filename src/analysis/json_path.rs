//! The http provider's `jsonPath`: `data.results[0].errorRate` read as a JSON Pointer.

/// The JSON Pointer (RFC 6901) for a dotted path such as `data.results[0].errorRate` (a
/// leading `$.` is allowed, as in JSONPath), or why the path is not one.
pub fn to_pointer(path: &str) -> Result<String, String> {
    let bad = |why: &str| format!("jsonPath `{path}`: {why}");
    let body = path
        .strip_prefix("$.")
        .or_else(|| path.strip_prefix('$'))
        .unwrap_or(path);
    if body.is_empty() {
        return Err(bad("empty path"));
    }
    let mut pointer = String::new();
    for (i, part) in body.split('.').enumerate() {
        let (key, mut rest) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        // Only the first part may be a bare index (`[0].a`, for an answer that is an array).
        if key.is_empty() && (i > 0 || rest.is_empty()) {
            return Err(bad(
                "empty field name (two dots in a row, or a dot at an end?)",
            ));
        }
        if !key.is_empty() {
            pointer.push('/');
            pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
        }
        while !rest.is_empty() {
            let Some(inner) = rest.strip_prefix('[') else {
                return Err(bad(&format!("unexpected `{rest}` after an index")));
            };
            let Some((index, after)) = inner.split_once(']') else {
                return Err(bad("`[` without `]`"));
            };
            let n = index
                .trim()
                .parse::<usize>()
                .map_err(|_| bad(&format!("`[{index}]` is not an array index")))?;
            pointer.push_str(&format!("/{n}"));
            rest = after;
        }
    }
    Ok(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_become_pointers() {
        assert_eq!(to_pointer("a.b[0].c").unwrap(), "/a/b/0/c");
        assert_eq!(to_pointer("$.m[1][2]").unwrap(), "/m/1/2");
        assert_eq!(to_pointer("[3].ok").unwrap(), "/3/ok");
        assert_eq!(to_pointer("$.a/b.c~d").unwrap(), "/a~1b/c~0d");
        let doc = json!({"a/b": {"c~d": 7}, "list": [{"v": 3}]});
        assert_eq!(
            doc.pointer(&to_pointer("a/b.c~d").unwrap()),
            Some(&json!(7))
        );
        assert_eq!(
            doc.pointer(&to_pointer("list[0].v").unwrap()),
            Some(&json!(3))
        );
        assert_eq!(doc.pointer(&to_pointer("list[1].v").unwrap()), None);
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (bad, why) in [
            ("", "empty path"),
            ("$", "empty path"),
            ("a..b", "empty field name"),
            ("a.", "empty field name"),
            ("a[x]", "`[x]` is not an array index"),
            ("a[1", "`[` without `]`"),
            ("a[1]b", "unexpected `b` after an index"),
        ] {
            let e = to_pointer(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("jsonPath `{bad}`: ")) && e.contains(why),
                "{bad}: {e}"
            );
        }
    }
}
