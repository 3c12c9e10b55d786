//! The one configuration error and the one "value or `_FILE`" reader, shared
//! by the API's and the CLI's configuration. Errors name the variable (or
//! the file), never a value.

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var}: {why}")]
    Invalid { var: &'static str, why: String },
    #[error("{path}: {why}")]
    File { path: String, why: String },
}

/// Where a secret setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The variable itself.
    Value,
    /// The file the `_FILE` variable names (re-read on rotation).
    File(std::path::PathBuf),
}

/// `var` when it is set and not blank, else the trimmed contents of the file
/// `file_var` names; `Missing(var)` when neither is given.
pub fn value_or_file(
    get: impl Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: &'static str,
) -> Result<(String, Source), ConfigError> {
    if let Some(value) = get(var).filter(|v| !v.trim().is_empty()) {
        return Ok((value, Source::Value));
    }
    match get(file_var).filter(|v| !v.trim().is_empty()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path.trim());
            let value = read_secret_file(&path)?;
            Ok((value, Source::File(path)))
        }
        None => Err(ConfigError::Missing(var)),
    }
}

/// A secret file's contents, trimmed; the error names the file, never its content.
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            why: e.kind().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_wins_then_the_file_then_missing() {
        let dir = std::env::temp_dir().join(format!("queue-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "  from-file\n").unwrap();
        let path = file.display().to_string();
        let both = |k: &str| match k {
            "V" => Some("direct".to_owned()),
            "V_FILE" => Some(path.clone()),
            _ => None,
        };
        assert_eq!(
            value_or_file(both, "V", "V_FILE").unwrap(),
            ("direct".to_owned(), Source::Value)
        );
        let only_file = |k: &str| (k == "V_FILE").then(|| path.clone());
        assert_eq!(
            value_or_file(only_file, "V", "V_FILE").unwrap(),
            ("from-file".to_owned(), Source::File(file.clone()))
        );
        assert_eq!(
            value_or_file(|_| None, "V", "V_FILE").unwrap_err(),
            ConfigError::Missing("V")
        );
        let gone = |k: &str| (k == "V_FILE").then(|| "/nonexistent/queue-secret".to_owned());
        let err = value_or_file(gone, "V", "V_FILE").unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/queue-secret:"), "{err}");
    }
}
