//! Listings (ListObjectsV2, ListObjects): the S3 keys of a space under a prefix, folded at a
//! delimiter into common prefixes, in pages.
//!
//! Every page reads the keys under the prefix anew (from the one function bucket the prefix
//! names, or from every bucket when the prefix names none) and pages through them in memory;
//! a continuation token is the last key a page consumed, so a listing resumes correctly
//! whatever changed in between.

use super::names;
use crate::storage::{Bucket, Prefix, Space, StorageBackend, StorageError};

/// Most keys or common prefixes in one page (S3's limit).
pub(crate) const MAX_KEYS: usize = 1000;

/// The S3 keys of `space` that start with `prefix`, sorted.
pub(crate) fn keys_under(
    backend: &dyn StorageBackend,
    space: &Space,
    prefix: &str,
) -> Result<Vec<String>, StorageError> {
    let mut keys = Vec::new();
    match prefix.split_once('/') {
        // The prefix names one function bucket: list it.
        Some((bucket, rest)) => {
            let bucket = Bucket::parse(bucket)?;
            let rest = Prefix::parse(rest)?;
            match backend.list(space, &bucket, &rest) {
                Ok(found) => keys.extend(found.iter().map(|k| names::s3_key(&bucket, k))),
                Err(StorageError::NoSuchBucket(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // It names none, or the beginning of a bucket's name: every bucket it matches.
        None => {
            let all = Prefix::parse("")?;
            for bucket in backend.buckets(space)? {
                if !bucket.as_str().starts_with(prefix) {
                    continue;
                }
                match backend.list(space, &bucket, &all) {
                    Ok(found) => keys.extend(found.iter().map(|k| names::s3_key(&bucket, k))),
                    Err(StorageError::NoSuchBucket(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            // `a-b/x` sorts before `a/x`: buckets in name order do not give keys in order.
            keys.sort();
        }
    }
    Ok(keys)
}

/// One page of a listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    /// Keys listed, in order.
    pub keys: Vec<String>,
    /// Common prefixes, in order.
    pub common_prefixes: Vec<String>,
    /// More follow; resume after `last`.
    pub truncated: bool,
    /// The last key this page consumed (a common prefix consumes every key it folds).
    pub last: Option<String>,
}

/// The page of `keys` (sorted, all starting with `prefix`) after key `after`, with at most
/// `max` entries, keys folded at the first `delimiter` past the prefix.
pub(crate) fn page(
    keys: &[String],
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> Page {
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let start = after.map_or(0, |a| keys.partition_point(|k| k.as_str() <= a));
    let mut page = Page::default();
    let mut i = start;
    while i < keys.len() {
        if page.keys.len() + page.common_prefixes.len() == max {
            page.truncated = true;
            break;
        }
        let key = &keys[i];
        let folded = delimiter.and_then(|d| {
            let rest = key.get(prefix.len()..)?;
            rest.find(d).map(|at| &key[..prefix.len() + at + d.len()])
        });
        match folded {
            Some(common) => {
                // Every key under this common prefix is consumed with it.
                let end = i + keys[i..].partition_point(|k| k.starts_with(common));
                page.common_prefixes.push(common.to_string());
                page.last = Some(keys[end - 1].clone());
                i = end;
            }
            None => {
                page.keys.push(key.clone());
                page.last = Some(key.clone());
                i += 1;
            }
        }
    }
    page
}

/// The continuation token of a page that ends after `last`: the key, percent-encoded, so that
/// any key travels safely in XML and in a query string.
pub(crate) fn token(last: &str) -> String {
    urlencoding::encode(last).into_owned()
}

/// The key a continuation token resumes after.
pub(crate) fn resume_after(token: &str) -> Option<String> {
    urlencoding::decode(token).ok().map(|k| k.into_owned())
}

/// How a listing's names are sent: as they are, or percent-encoded (`encoding-type=url`,
/// which boto3 asks for, since XML cannot carry every character a key may hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Plain,
    Url,
}

impl Encoding {
    pub(crate) fn of(requested: Option<&s3s::dto::EncodingType>) -> Self {
        match requested {
            Some(e) if e.as_str() == s3s::dto::EncodingType::URL => Self::Url,
            _ => Self::Plain,
        }
    }

    pub(crate) fn apply(self, name: &str) -> String {
        match self {
            Self::Plain => name.to_string(),
            // Like S3: `/` stays readable.
            Self::Url => urlencoding::encode(name).replace("%2F", "/"),
        }
    }

    pub(crate) fn dto(self) -> Option<s3s::dto::EncodingType> {
        match self {
            Self::Plain => None,
            Self::Url => Some(s3s::dto::EncodingType::from_static(
                s3s::dto::EncodingType::URL,
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn pages_fold_common_prefixes_and_resume_after_them() {
        let all = keys(&[
            "a/1", "a/2", "b/x/1", "b/x/2", "b/y", "c", "d/1", "d/2", "d/3",
        ]);
        // No delimiter: keys only, paged.
        let p = page(&all, "", None, None, 4);
        assert_eq!(p.keys, ["a/1", "a/2", "b/x/1", "b/x/2"]);
        assert!(p.truncated);
        let p = page(&all, "", None, p.last.as_deref(), 4);
        assert_eq!(p.keys, ["b/y", "c", "d/1", "d/2"]);
        let p = page(&all, "", None, p.last.as_deref(), 4);
        assert_eq!(
            (p.keys.as_slice(), p.truncated),
            (&["d/3".to_string()][..], false)
        );
        // Delimiter `/`: each prefix once; a page of 2 ends after a whole common prefix.
        let p = page(&all, "", Some("/"), None, 2);
        assert_eq!(p.common_prefixes, ["a/", "b/"]);
        assert_eq!(p.last.as_deref(), Some("b/y"));
        assert!(p.truncated);
        let p = page(&all, "", Some("/"), p.last.as_deref(), 2);
        assert_eq!(
            (p.keys.as_slice(), p.common_prefixes.as_slice()),
            (&["c".to_string()][..], &["d/".to_string()][..])
        );
        assert!(!p.truncated);
        // Under a prefix, folding starts past it.
        let under: Vec<String> = all
            .iter()
            .filter(|k| k.starts_with("b/"))
            .cloned()
            .collect();
        let p = page(&under, "b/", Some("/"), None, 10);
        assert_eq!(
            (p.keys.as_slice(), p.common_prefixes.as_slice()),
            (&["b/y".to_string()][..], &["b/x/".to_string()][..])
        );
        // A start after the last key, and a page of none.
        assert_eq!(page(&all, "", None, Some("zzz"), 10), Page::default());
        let p = page(&all, "", None, None, 0);
        assert!(p.truncated && p.keys.is_empty());
    }

    #[test]
    fn tokens_and_encodings_carry_any_key() {
        for key in ["a/b c", "x+y/%41", "ü/\u{1}"] {
            assert_eq!(resume_after(&token(key)).unwrap(), key);
        }
        assert_eq!(Encoding::Url.apply("in/a b+c.jpg"), "in/a%20b%2Bc.jpg");
        assert_eq!(Encoding::Plain.apply("in/a b"), "in/a b");
    }
}
