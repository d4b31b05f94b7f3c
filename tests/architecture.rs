//! The house rule that keeps tidegate simple, checked on the source: the data plane never
//! imports the control side. `src/proxy`, `src/routing`, `src/health`, `src/metrics` and the
//! modules they build on (`proxy_config`, `units`, `clock`) may name only each other.

use std::path::{Path, PathBuf};

const DATA_PLANE: [&str; 7] = [
    "src/proxy",
    "src/routing",
    "src/health",
    "src/metrics",
    "src/proxy_config.rs",
    "src/units.rs",
    "src/clock.rs",
];
const ALLOWED: [&str; 7] = [
    "proxy",
    "routing",
    "health",
    "metrics",
    "proxy_config",
    "units",
    "clock",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("read source dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every `crate::NAME` a file mentions, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` names several at once.
            if name.is_empty() && after.starts_with('{') {
                let group = after[1..].split('}').next().unwrap_or("");
                for part in group.split(',') {
                    let part = part.trim().split("::").next().unwrap_or("").trim();
                    if !part.is_empty() {
                        out.push((n + 1, part.to_string()));
                    }
                }
            } else {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn the_data_plane_never_imports_the_control_side() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for part in DATA_PLANE {
        rust_files(&root.join(part), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source file");
        for (line, name) in crate_paths(&text) {
            if !ALLOWED.contains(&name.as_str()) {
                broken.push(format!(
                    "{}:{line}: crate::{name}",
                    file.strip_prefix(root).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the data plane imports the control side:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_sees_imports_in_all_their_forms() {
    let found = crate_paths(
        "use crate::rollout::Spec;\nuse crate::{config, metrics::X};\nlet x = crate::analysis::f();",
    );
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["rollout", "config", "metrics", "analysis"]);
    assert_eq!((found[1].0, found[3].0), (2, 3));
}
