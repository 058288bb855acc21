//! Kubernetes label selector strings (`app=web,tier in (a,b),!canary`) parsed
//! into kube-core's [`Selector`], which matches label maps.
//!
//! kube-core builds selectors but has no parser for the string form, so this
//! one follows `k8s.io/apimachinery/pkg/labels`: operators `=`, `==`, `!=`,
//! `in`, `notin`, existence (`key`) and non-existence (`!key`), with key and
//! value syntax checked. Errors say what was wrong and where.

use std::collections::BTreeSet;

use kube::core::{Expression, Selector};

/// Why a selector string was refused; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?}: {reason} at position {position}")]
pub struct SelectorError {
    /// The selector given.
    pub input: String,
    /// What is wrong.
    pub reason: String,
    /// Byte offset of the problem.
    pub position: usize,
}

/// The longest selector string accepted.
pub const MAX_SELECTOR_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Comma,
    Open,
    Close,
    Gt,
    Lt,
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<(usize, Token<'a>)> {
        let bytes = self.input.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let b = *bytes.get(start)?;
        let (len, token) = match b {
            b'=' if bytes.get(start + 1) == Some(&b'=') => (2, Token::DoubleEq),
            b'=' => (1, Token::Eq),
            b'!' if bytes.get(start + 1) == Some(&b'=') => (2, Token::NotEq),
            b'!' => (1, Token::Bang),
            b',' => (1, Token::Comma),
            b'(' => (1, Token::Open),
            b')' => (1, Token::Close),
            b'>' => (1, Token::Gt),
            b'<' => (1, Token::Lt),
            _ => {
                let len = self.input[start..]
                    .find(|c: char| c.is_ascii_whitespace() || "=!,()<>".contains(c))
                    .unwrap_or(self.input.len() - start);
                (len, Token::Word(&self.input[start..start + len]))
            }
        };
        self.pos += len;
        Some((start, token))
    }
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Token<'a>)>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: impl Into<String>) -> SelectorError {
        let position = self.tokens.get(self.at).map_or(self.input.len(), |(p, _)| *p);
        SelectorError { input: self.input.to_string(), reason: reason.into(), position }
    }

    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn bump(&mut self) -> Option<Token<'a>> {
        let t = self.tokens.get(self.at).map(|(_, t)| t.clone());
        self.at += 1;
        t
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let w = *w;
                if let Err(reason) = check_key(w) {
                    return Err(self.error(format!("invalid key {w:?}: {reason}")));
                }
                self.at += 1;
                Ok(w.to_string())
            }
            Some(t) => Err(self.error(format!("expected a label key, found {}", describe(t)))),
            None => Err(self.error("expected a label key, found the end")),
        }
    }

    /// A value after `=`, `==` or `!=`; may be empty.
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let w = *w;
                if let Err(reason) = check_value(w) {
                    return Err(self.error(format!("invalid value {w:?}: {reason}")));
                }
                self.at += 1;
                Ok(w.to_string())
            }
            Some(Token::Comma) | None => Ok(String::new()),
            Some(t) => Err(self.error(format!("expected a value, found {}", describe(t)))),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if self.bump() != Some(Token::Open) {
            self.at -= 1;
            return Err(self.error("expected '(' after in/notin"));
        }
        let mut values = BTreeSet::new();
        loop {
            match self.peek() {
                Some(Token::Close) if values.is_empty() => {
                    return Err(self.error("an in/notin set must not be empty"));
                }
                Some(Token::Word(_)) => {
                    values.insert(self.value()?);
                }
                Some(Token::Comma) | Some(Token::Close) => {
                    values.insert(String::new());
                }
                Some(t) => return Err(self.error(format!("expected a value in the set, found {}", describe(t)))),
                None => return Err(self.error("unclosed '('")),
            }
            match self.bump() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(values),
                Some(t) => {
                    self.at -= 1;
                    return Err(self.error(format!("expected ',' or ')', found {}", describe(&t))));
                }
                None => return Err(self.error("unclosed '('")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Expression, SelectorError> {
        if self.peek() == Some(&Token::Bang) {
            self.at += 1;
            return Ok(Expression::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(Expression::Exists(key)),
            Some(Token::Eq) | Some(Token::DoubleEq) => {
                self.at += 1;
                Ok(Expression::Equal(key, self.value()?))
            }
            Some(Token::NotEq) => {
                self.at += 1;
                Ok(Expression::NotEqual(key, self.value()?))
            }
            Some(Token::Word("in")) => {
                self.at += 1;
                Ok(Expression::In(key, self.set()?))
            }
            Some(Token::Word("notin")) => {
                self.at += 1;
                Ok(Expression::NotIn(key, self.set()?))
            }
            Some(Token::Gt) | Some(Token::Lt) => Err(self.error("'>' and '<' are not supported for labels")),
            Some(t) => Err(self.error(format!("expected an operator after {key:?}, found {}", describe(t)))),
        }
    }
}

fn describe(t: &Token<'_>) -> String {
    match t {
        Token::Word(w) => format!("{w:?}"),
        Token::Eq => "'='".into(),
        Token::DoubleEq => "'=='".into(),
        Token::NotEq => "'!='".into(),
        Token::Bang => "'!'".into(),
        Token::Comma => "','".into(),
        Token::Open => "'('".into(),
        Token::Close => "')'".into(),
        Token::Gt => "'>'".into(),
        Token::Lt => "'<'".into(),
    }
}

/// A qualified name: 1–63 characters, alphanumeric at both ends, `-_.`
/// inside.
fn check_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err("name part is empty");
    }
    if bytes.len() > 63 {
        return Err("name part is longer than 63 characters");
    }
    let inner_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
    let ends_ok = bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if inner_ok && ends_ok { Ok(()) } else { Err("must be alphanumeric, '-', '_' or '.', alphanumeric at both ends") }
}

/// `[prefix/]name`, the prefix a DNS subdomain.
fn check_key(key: &str) -> Result<(), &'static str> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|label| {
                    let b = label.as_bytes();
                    !b.is_empty()
                        && b.len() <= 63
                        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                        && b[0] != b'-'
                        && b[b.len() - 1] != b'-'
                });
            if !prefix_ok {
                return Err("prefix must be a lowercase DNS subdomain");
            }
            check_name(name)
        }
        None => check_name(key),
    }
}

fn check_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() { Ok(()) } else { check_name(value) }
}

/// Parses a label selector string. The empty string selects everything.
pub fn parse_selector(input: &str) -> Result<Selector, SelectorError> {
    if input.len() > MAX_SELECTOR_LEN {
        return Err(SelectorError {
            input: input.chars().take(64).collect::<String>() + "…",
            reason: format!("longer than {MAX_SELECTOR_LEN} bytes"),
            position: MAX_SELECTOR_LEN,
        });
    }
    let mut lexer = Lexer { input, pos: 0 };
    let tokens = std::iter::from_fn(|| lexer.next()).collect();
    let mut parser = Parser { input, tokens, at: 0 };
    let mut expressions = Vec::new();
    if parser.peek().is_none() {
        return Ok(Selector::default());
    }
    loop {
        expressions.push(parser.requirement()?);
        match parser.bump() {
            None => break,
            Some(Token::Comma) => {
                if parser.peek().is_none() {
                    return Err(parser.error("expected a requirement after ','"));
                }
            }
            Some(t) => {
                parser.at -= 1;
                return Err(parser.error(format!("expected ',' or the end, found {}", describe(&t))));
            }
        }
    }
    Ok(expressions.into_iter().collect())
}

#[cfg(test)]
mod tests;
