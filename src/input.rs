//! The files users hand the planning tools and `standalone` (scenarios,
//! clusters, Deployments, HPA manifests), read with bounds that hold before
//! any parsing: a size, a nesting depth, and no YAML aliases. A small file
//! can otherwise expand without bound (100,000 aliases of one long list) or
//! nest deep enough that parsing takes minutes.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest input file read.
pub const MAX_BYTES: u64 = 1 << 20;
/// The deepest `[`/`{` nesting read.
pub const MAX_DEPTH: usize = 64;

/// Why an input file was not read.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {reason}", path.display())]
pub struct InputError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Reads the YAML (or JSON) file `path`, given with `flag`, refusing one
/// over [`MAX_BYTES`], nested deeper than [`MAX_DEPTH`], or with aliases.
pub fn read_yaml(path: &Path, flag: &'static str) -> Result<String, InputError> {
    let err = |reason: String| InputError { flag, path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(err(format!("larger than {} KiB, the most read", MAX_BYTES >> 10)));
    }
    check_yaml(&text).map_err(err)?;
    Ok(text)
}

/// Checks YAML text for nesting deeper than [`MAX_DEPTH`] and for aliases
/// (`*name`), outside quoted strings, block scalars (`|`, `>`) and comments.
pub fn check_yaml(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    // A quoted string open across lines: its closing quote.
    let mut open_quote: Option<char> = None;
    // The indentation of the line that opened a block scalar, while in one.
    let mut block: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let number = n + 1;
        let indent = line.len() - line.trim_start().len();
        if let Some(parent) = block {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block = None;
        }
        let mut chars = line.chars().peekable();
        // Whether a token may start here: at the line start, after a blank or a flow indicator.
        let mut token_start = true;
        // The line's content outside quotes and comments, to spot a block scalar's indicator.
        let mut plain = String::new();
        while let Some(c) = chars.next() {
            if let Some(quote) = open_quote {
                match c {
                    '\\' if quote == '"' => {
                        chars.next();
                    }
                    c if c == quote => open_quote = None,
                    _ => {}
                }
                token_start = false;
                continue;
            }
            match c {
                '#' if token_start => break,
                '"' | '\'' if token_start => open_quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(format!("line {number}: nested deeper than {MAX_DEPTH} levels"));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                '*' if token_start && chars.peek().is_some_and(|c| !c.is_whitespace() && !",[]{}".contains(*c)) => {
                    return Err(format!(
                        "line {number}: YAML aliases (*name) are not read here, so that a small file cannot expand without bound; write the value out"
                    ));
                }
                _ => {}
            }
            if open_quote.is_none() {
                plain.push(c);
            }
            token_start = c.is_whitespace() || "[{,".contains(c);
        }
        let plain = plain.trim_end();
        let indicator = plain.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '+');
        if (indicator.ends_with('|') || indicator.ends_with('>'))
            && (indicator.len() == 1 || indicator[..indicator.len() - 1].ends_with([' ', ':', '-']))
        {
            block = Some(indent);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_yaml_passes() {
        let scenario =
            "# a comment with * and [\nworkloads:\n  reasoning-suite:\n    - {for: 30s, load: 40}\n    - {load: 95}\n";
        assert_eq!(check_yaml(scenario), Ok(()));
        let quoted = "a: \"*not an alias [\"\nb: '* nor [ this'\nc: 2*3\nd: [x, {y: z}]\nselector: app in (a, b)\n";
        assert_eq!(check_yaml(quoted), Ok(()));
        // Block scalars hold text, not YAML: markdown and PromQL pass.
        let blocks = "metadata:\n  annotations:\n    note: |\n      *important* [see\n      more\n    query: >-\n      sum(x) *100\nspec: {a: 1}\n";
        assert_eq!(check_yaml(blocks), Ok(()));
        // Back out of the block, an alias is one again.
        assert!(check_yaml("note: |\n  *text\nb: *alias\n").unwrap_err().starts_with("line 3: "));
    }

    #[test]
    fn every_shipped_input_file_passes() {
        let mut checked = 0;
        for dir in ["hack/scenarios", "deploy/examples", "deploy/examples/keda", "deploy/prometheus"] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let flag = "--file";
                    read_yaml(&path, flag).unwrap_or_else(|e| panic!("{e}"));
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "{checked}");
    }

    #[test]
    fn aliases_and_deep_nesting_are_refused_with_the_line() {
        let bomb = "steps: &s\n  - {load: 1}\nworkloads:\n  a: *s\n";
        let err = check_yaml(bomb).unwrap_err();
        assert!(err.starts_with("line 4: YAML aliases"), "{err}");
        let in_list = "workloads:\n  a: [*s]\n";
        assert!(check_yaml(in_list).unwrap_err().starts_with("line 2: YAML aliases"));
        let deep = format!("x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(check_yaml(&deep).unwrap_err(), format!("line 1: nested deeper than {MAX_DEPTH} levels"));
        let ok = format!("x: {}{}\n", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check_yaml(&ok), Ok(()));
    }

    #[test]
    fn a_file_over_the_size_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, "#".repeat(MAX_BYTES as usize + 1)).unwrap();
        let err = read_yaml(&path, "--scenario").unwrap_err().to_string();
        assert!(err.starts_with("--scenario ") && err.ends_with("larger than 1024 KiB, the most read"), "{err}");
        let missing = read_yaml(&dir.path().join("none.yaml"), "--cluster").unwrap_err().to_string();
        assert!(missing.starts_with("--cluster ") && missing.contains("none.yaml"), "{missing}");
    }
}
