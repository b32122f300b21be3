//! The AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`).
//!
//! object_store reads the `AWS_*` environment but not these files, where most operators keep
//! their keys, region and (for MinIO or Ceph) endpoint. Only what an S3 client needs is read:
//! static keys, session token, region and endpoint of the selected profile.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings a profile gives, as object_store config keys (`aws_access_key_id`, …).
pub fn profile_settings() -> BTreeMap<String, String> {
    let profile = env("AWS_PROFILE")
        .or_else(|| env("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".to_owned());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".aws").join(default)))
    };
    let mut settings = BTreeMap::new();
    // The config file names profiles `[profile NAME]` (but `[default]`); credentials win.
    if let Some(text) = file("AWS_CONFIG_FILE", "config").and_then(read) {
        let section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        settings.extend(section_settings(&text, &section));
    }
    if let Some(text) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials").and_then(read) {
        settings.extend(section_settings(&text, &profile));
    }
    settings
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn read(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The keys of `[section]` in an INI file that name S3 settings, as object_store keys.
fn section_settings(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = match key.trim() {
            "aws_access_key_id" => "aws_access_key_id",
            "aws_secret_access_key" => "aws_secret_access_key",
            "aws_session_token" => "aws_session_token",
            "region" => "aws_region",
            "endpoint_url" => "aws_endpoint",
            _ => continue,
        };
        settings.insert(key.to_owned(), value.trim().to_owned());
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_selected_section_only() {
        let text = "\
[default]
aws_access_key_id = AKIDEFAULT
region=eu-west-1

[profile lab]
# MinIO in the basement
aws_access_key_id = AKILAB
aws_secret_access_key = secret
endpoint_url = http://minio:9000
output = json
";
        let lab = section_settings(text, "profile lab");
        assert_eq!(lab["aws_access_key_id"], "AKILAB");
        assert_eq!(lab["aws_endpoint"], "http://minio:9000");
        assert!(!lab.contains_key("aws_region"));
        assert_eq!(lab.len(), 3);
        let default = section_settings(text, "default");
        assert_eq!(default["aws_region"], "eu-west-1");
        assert_eq!(default["aws_access_key_id"], "AKIDEFAULT");
    }
}
