//! A natural-text corpus for recall and retrieval figures, with no download: the sentences of
//! the comments (`//`, `///`, `//!`) of the crates this project locks, as cargo unpacked them
//! under `$CARGO_HOME/registry/src` (about 112,000 distinct sentences). Written by hundreds of authors about many subjects, it is
//! varied English prose, unlike a templated corpus, on which any index scores 1.0. Which crates
//! and versions go in is fixed by `Cargo.lock`, and they are read in sorted order, so the corpus
//! is the same on every machine that built this commit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::root;

/// The locked registry crates as `name-version` directory names, sorted.
fn locked_crates() -> Vec<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("reading Cargo.lock");
    let mut out = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("version = ")
            && let Some(n) = name.take()
        {
            out.push(format!("{n}-{}", v.trim_matches('"')));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Splits a paragraph into sentences at ". " (and "? ", "! ") before a capital letter.
fn sentences_of(paragraph: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = paragraph.chars().collect();
    let mut start = 0;
    for i in 1..chars.len().saturating_sub(1) {
        if matches!(chars[i - 1], '.' | '?' | '!') && chars[i] == ' ' && chars[i + 1].is_uppercase()
        {
            out.push(chars[start..i].iter().collect());
            start = i + 1;
        }
    }
    out.push(chars[start..].iter().collect());
}

/// Prose, not code: long enough, mostly letters, no markup-heavy fragments.
fn is_prose(s: &str) -> bool {
    let len = s.chars().count();
    let letters = s.chars().filter(|c| c.is_alphabetic() || *c == ' ').count();
    (30..=400).contains(&len)
        && letters * 100 >= len * 80
        && !s.contains("```")
        && s.chars().next().is_some_and(char::is_uppercase)
}

/// Up to `limit` distinct sentences, in a fixed order.
pub fn natural_sentences(limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let registries = registry_dirs();
    for krate in locked_crates() {
        let Some(dir) = registries
            .iter()
            .map(|r| r.join(&krate))
            .find(|d| d.is_dir())
        else {
            continue;
        };
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let mut paragraph = String::new();
            let mut found = Vec::new();
            for line in text.lines() {
                let t = line.trim_start();
                let comment = t
                    .strip_prefix("//")
                    .map(|c| c.trim_start_matches(['/', '!']));
                match comment.map(str::trim) {
                    Some(words) if !words.is_empty() && !words.starts_with('#') => {
                        if !paragraph.is_empty() {
                            paragraph.push(' ');
                        }
                        paragraph.push_str(words);
                    }
                    _ => {
                        if !paragraph.is_empty() {
                            sentences_of(&paragraph, &mut found);
                            paragraph.clear();
                        }
                    }
                }
            }
            for s in found {
                if is_prose(&s) && seen.insert(s.clone()) {
                    out.push(s);
                    if out.len() == limit {
                        return out;
                    }
                }
            }
        }
    }
    out
}
