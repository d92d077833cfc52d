//! The README's Rust snippets paste as shown: no hidden `# ` lines, and each
//! is compiled, as a doctest (`ReadmeDoctests` in `src/lib.rs`, with every
//! feature on) or, for the test files it shows (`rust,ignore` blocks), as
//! one of the crate's own tests, of which it is the whole text.
//!
//! One exception: a `rust,ignore` block right after the line
//! `<!-- snippet-check: skip (why) -->` shows an API that has not landed
//! yet, which neither rustdoc nor `.ci/readme-snippets` can build until it
//! does (the marker and `ignore` go then).

use std::fs;
use std::path::PathBuf;

/// The marker of a block the snippet check skips: an API still to land.
const SKIP_MARKER: &str = "<!-- snippet-check: skip";

/// The fenced blocks of `markdown` whose info string starts with `rust`:
/// (info string, text), without those the snippet check is told to skip.
fn rust_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    // The open block: its info string, its fence's indentation, its text.
    let mut current: Option<(String, usize, String)> = None;
    // The last non-blank line outside a block.
    let mut previous = "";
    for line in markdown.lines() {
        let indent = line.len() - line.trim_start().len();
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(info)) if info.starts_with("rust") => {
                if previous.starts_with(SKIP_MARKER) {
                    assert!(
                        info.contains("ignore"),
                        "a README block marked to be skipped must be ```rust,ignore: {previous}"
                    );
                }
                current = Some((info.to_owned(), indent, String::new()));
            }
            (Some(_), Some(_)) => {
                let block = current.take();
                if !previous.starts_with(SKIP_MARKER) {
                    blocks.extend(block.map(|(info, _, text)| (info, text)));
                }
                previous = "```";
            }
            (Some((_, indent, text)), None) => {
                text.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                text.push('\n');
            }
            (None, _) => {}
        }
        if current.is_none() && !line.trim().is_empty() && fence.is_none() {
            previous = line.trim();
        }
    }
    blocks
}

/// The package's directory: cargo sets it when it runs the test (the
/// directory it was built in may be gone: a package unpacked elsewhere).
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn readme() -> String {
    fs::read_to_string(root().join("README.md")).unwrap()
}

#[test]
fn no_snippet_hides_a_line() {
    for (info, text) in rust_blocks(&readme()) {
        for line in text.lines() {
            let trimmed = line.trim_start();
            assert!(
                !(trimmed == "#" || trimmed.starts_with("# ")),
                "a ```{info} block of README.md hides a line from a reader who pastes it: {line:?}\n{text}"
            );
        }
    }
}

#[test]
fn every_test_snippet_is_a_test_of_the_crate() {
    let tests: Vec<String> = fs::read_dir(root().join("tests"))
        .unwrap()
        .map(|entry| fs::read_to_string(entry.unwrap().path()).unwrap_or_default())
        .collect();
    let ignored: Vec<String> = rust_blocks(&readme())
        .into_iter()
        .filter(|(info, _)| info.contains("ignore"))
        .map(|(_, text)| text)
        .collect();
    assert!(!ignored.is_empty(), "the README shows its test files");
    for text in ignored {
        assert!(
            tests.contains(&text),
            "this README block is not the whole text of a file in tests/, so nothing compiles it:\n{text}"
        );
    }
}
