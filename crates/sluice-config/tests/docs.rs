//! The documentation is checked against the code: every ```toml block of
//! docs/configuration.md and every examples/*.toml must be a valid
//! configuration, and the presets table in the docs must be what
//! `sluice presets` prints.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn docs() -> String {
    std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs/configuration.md exists")
}

/// `(first line number, text)` of every fenced block in `lang`.
fn fenced(md: &str, lang: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match &mut current {
            None if fence.is_some_and(|l| l.trim() == lang) => {
                current = Some((i + 2, String::new()));
            }
            None => {}
            Some(_) if fence.is_some() => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unclosed ``` block");
    blocks
}

#[test]
fn every_toml_block_in_the_docs_is_valid() {
    let md = docs();
    let blocks = fenced(&md, "toml");
    assert!(blocks.len() >= 15, "only {} toml blocks found", blocks.len());
    for (line, text) in blocks {
        let origin = format!("docs/configuration.md (block at line {line})");
        if let Err(e) = sluice_config::parse(&text, &origin) {
            panic!("{e}\n---\n{text}");
        }
    }
}

/// The other guides' ```toml blocks are whole configurations too.
#[test]
fn every_toml_block_in_the_guides_is_valid() {
    let mut n = 0;
    for doc in [
        "README.md",
        "docs/gateway-http.md",
        "docs/gateway-tcp.md",
        "docs/deployment.md",
        "docs/redis.md",
    ] {
        let md = std::fs::read_to_string(root().join(doc)).expect("the guide exists");
        for (line, text) in fenced(&md, "toml") {
            n += 1;
            let origin = format!("{doc} (block at line {line})");
            // A block showing a gateway's sub-table alone (`[[gateway.http.rule]]`)
            // is checked inside a minimal gateway.
            let text = if text.trim_start().starts_with("[[gateway.http.") {
                format!("[[gateway.http]]\nlisten = \"127.0.0.1:8448\"\nupstream = \"http://127.0.0.1:8008\"\nprotocol = \"generic\"\n{text}")
            } else {
                text
            };
            if let Err(e) = sluice_config::parse(&text, &origin) {
                panic!("{e}\n---\n{text}");
            }
        }
    }
    assert!(n >= 5, "only {n} toml blocks found in the guides");
}

#[test]
fn every_example_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/ exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            n += 1;
            if let Err(e) = sluice_config::load(&path) {
                panic!("{e}");
            }
        }
    }
    assert!(n > 0, "no examples found");
}

#[test]
fn docs_show_the_presets_table_the_code_prints() {
    let md = docs();
    let (_, after_marker) = md
        .split_once("<!-- presets-table -->")
        .expect("docs mark the presets table");
    let (_, table) = fenced(after_marker, "text")
        .into_iter()
        .next()
        .expect("a text block follows the marker");
    assert_eq!(
        table,
        sluice_config::presets_table(),
        "docs/configuration.md's presets table is stale: paste `sluice presets` output"
    );
}

#[test]
fn docs_list_every_builtin_action_with_its_default_target() {
    let md = docs();
    for (side, action, per) in sluice_core::policy::BUILTIN_ACTIONS {
        let row = format!("| {side} | `{action}` | {} |", per.as_str());
        assert!(md.contains(&row), "docs lack the row {row:?}");
    }
}
