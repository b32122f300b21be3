//! `s3://bucket/prefix` addresses of datasets.

use std::fmt;

use crate::StoreError;

/// The scheme an object-store output starts with.
pub const S3_SCHEME: &str = "s3://";

/// A dataset's place in an S3-compatible store: its bucket and the key prefix its objects go
/// under (`prefix/part-00000.parquet`, `prefix/_manifest.json`, `prefix/_SUCCESS`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectUrl {
    /// The bucket.
    pub bucket: String,
    /// The dataset's prefix, without leading or trailing `/`.
    pub prefix: String,
}

impl ObjectUrl {
    /// Whether `text` names an object-store location rather than a local path.
    pub fn is_remote(text: &str) -> bool {
        text.starts_with(S3_SCHEME)
    }

    /// Parses `s3://bucket/prefix…`.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Url`] when the scheme is not `s3://`, the bucket or the prefix is
    /// empty, or a path segment is `.`/`..` or empty (S3 would keep them; readers that list
    /// folders would not find them).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::Url {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix(S3_SCHEME)
            .ok_or_else(|| invalid("it does not start with s3://"))?;
        let (bucket, prefix) = rest
            .split_once('/')
            .ok_or_else(|| invalid("it names a bucket but no dataset prefix"))?;
        let prefix = prefix.trim_end_matches('/');
        if bucket.is_empty() {
            return Err(invalid("the bucket is empty"));
        }
        if prefix.is_empty() {
            return Err(invalid("the dataset prefix is empty"));
        }
        if prefix
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(invalid("a path segment is empty, . or .."));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The key of `name` inside the dataset.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// The dataset's last path segment (its `stem`).
    pub fn name(&self) -> &str {
        self.prefix.rsplit('/').next().unwrap_or(&self.prefix)
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{S3_SCHEME}{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let url = ObjectUrl::parse("s3://lake/bam/run1/sample/").unwrap();
        assert_eq!(url.bucket, "lake");
        assert_eq!(url.prefix, "bam/run1/sample");
        assert_eq!(url.key("_SUCCESS"), "bam/run1/sample/_SUCCESS");
        assert_eq!(url.name(), "sample");
        assert_eq!(url.to_string(), "s3://lake/bam/run1/sample");
    }

    #[test]
    fn refuses_what_is_not_a_dataset_prefix() {
        for bad in [
            "lake/x",
            "s3://lake",
            "s3://lake/",
            "s3:///x",
            "s3://lake/a//b",
            "s3://lake/a/../b",
        ] {
            assert!(ObjectUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(ObjectUrl::is_remote("s3://lake/x"));
        assert!(!ObjectUrl::is_remote("./outbox/x"));
    }
}
