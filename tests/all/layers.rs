//! The house's layers, checked: each module of `src` may use only modules of lower layers
//! (ARCHITECTURE.md, "Layers"), so no two modules import each other, however indirectly. Every
//! `crate::` path in a module's code counts (its `use` lines and paths written inline; not its
//! comments or its tests). A module missing from the table fails too: a new module is placed
//! before it lands.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers, lowest first: what each module of `src` is, by the top of its path.
const LAYERS: &[&[&str]] = &[
    // Foundations: nothing of the crate below them.
    &[
        "secret",
        "words",
        "time",
        "pause",
        "memory",
        "process",
        "rate",
        "retry",
        "liveness",
        "http_server",
        "watch",
    ],
    // Text from outside, the pace, signing, the fixture zooid.
    &["quote", "pace", "nip98", "fixture"],
    // What zooid accepts, the lease, the settings.
    &["rules", "lease", "env"],
    // The database.
    &["store"],
    // What is read of the worker; the request body.
    &["metrics", "relay_config"],
    // The HTTP client.
    &["zooid"],
    // The worker.
    &["infra"],
    // The binary's parts.
    &[
        "notify", "logging", "check", "status", "manual", "prune", "endpoint",
    ],
    // The binary's commands that wire the parts.
    &["dev", "daemon"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The code of a module file: without its tests and its comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a module's code names through `crate::`.
fn uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            found.extend(
                list.split(',')
                    .filter_map(|part| part.trim().split("::").next())
                    .filter(|name| !name.is_empty())
                    .map(str::to_string),
            );
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

/// Every module file of `src` with the module it belongs to (the top of its path).
fn modules(src: &Path) -> BTreeMap<String, Vec<std::path::PathBuf>> {
    let mut found: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs").to_string();
            if top != "lib" && top != "main" {
                found.entry(top).or_default().push(path);
            }
        }
    }
    found
}

/// What breaks the layers in the crate at `src`: one line per use of a module that is not
/// lower, and per module not placed.
fn broken(src: &Path) -> Vec<String> {
    let mut broken = Vec::new();
    for (module, files) in modules(src) {
        let Some(layer) = layer_of(&module) else {
            broken.push(format!("{module} is in no layer: place it in LAYERS"));
            continue;
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&code(&text)) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(l) if l < layer => {}
                    Some(l) => broken.push(format!(
                        "{} (layer {layer}) uses crate::{used} (layer {l}): only lower layers",
                        file.strip_prefix(src).unwrap().display()
                    )),
                    None => broken.push(format!(
                        "{} uses crate::{used}, which is in no layer",
                        file.strip_prefix(src).unwrap().display()
                    )),
                }
            }
        }
    }
    broken.sort();
    broken.dedup();
    broken
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let broken = broken(&src);
    assert!(
        broken.is_empty(),
        "the layers are broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_check_finds_a_circle_put_back() {
    // A copy of the crate's sources where the store uses the metrics again, as it once did.
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (module, files) in modules(&src) {
        for file in files {
            let to = dir.path().join(file.strip_prefix(&src).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let mut text = std::fs::read_to_string(&file).unwrap();
            if module == "store" && file.ends_with("writer.rs") {
                text.push_str("\nfn watcher(m: &crate::metrics::Metrics) {}\n");
            }
            std::fs::write(to, text).unwrap();
        }
    }
    assert_eq!(
        broken(dir.path()),
        ["store/writer.rs (layer 3) uses crate::metrics (layer 4): only lower layers"]
    );
    // And a module nobody placed.
    std::fs::write(dir.path().join("stray.rs"), "use crate::store::Query;\n").unwrap();
    assert!(broken(dir.path()).contains(&"stray is in no layer: place it in LAYERS".to_string()));
}
