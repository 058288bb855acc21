//! Token files as Kubernetes mounts them (a Secret's key, a projected
//! service-account token): read whole, surrounding whitespace dropped.

use std::sync::Arc;

/// Reads a token file: its content without surrounding whitespace, which
/// must not be empty.
pub fn read_token(path: &std::path::Path, flag: &str) -> std::io::Result<Arc<str>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read {} ({flag}): {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} ({flag}) is empty", path.display()),
        ));
    }
    Ok(token.into())
}
