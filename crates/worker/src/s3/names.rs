//! S3 names onto Kindling's: an S3 bucket is a function's space, an S3 key is
//! `<bucket>/<key>` (the function's bucket, then the key in it), validated by the storage
//! service's own rules so that no name reaches outside its space. Also who may call: the one
//! access key of `[s3]`.

use crate::storage::{Bucket, Key, Space};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

/// Where an S3 object lives in functions' storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub space: Space,
    pub bucket: Bucket,
    pub key: Key,
}

/// The space an S3 bucket names.
pub(crate) fn space(s3_bucket: &str) -> S3Result<Space> {
    Space::parse(s3_bucket).map_err(|e| s3_error!(InvalidBucketName, "{e}"))
}

/// Where S3 key `s3_key` of S3 bucket `s3_bucket` lives.
pub(crate) fn object(s3_bucket: &str, s3_key: &str) -> S3Result<Location> {
    let space = space(s3_bucket)?;
    let Some((bucket, key)) = s3_key.split_once('/') else {
        return Err(s3_error!(
            InvalidArgument,
            "key {:?} names no bucket: keys here are <bucket>/<key>, the function's bucket \
             and the key in it",
            crate::storage::clip(s3_key)
        ));
    };
    let bucket = Bucket::parse(bucket).map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
    let key = Key::parse(key).map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
    Ok(Location { space, bucket, key })
}

/// The S3 key of `key` in `bucket`.
pub(crate) fn s3_key(bucket: &Bucket, key: &str) -> String {
    format!("{}/{key}", bucket.as_str())
}

/// S3 bucket names as function names: what the registry allows (letters, digits, `.`, `_`,
/// `-`, up to 63), rather than AWS's lower-case rules, so that every function is reachable.
pub(crate) struct FunctionNames;

impl s3s::validation::NameValidation for FunctionNames {
    fn validate_bucket_name(&self, name: &str) -> bool {
        Space::parse(name).is_ok()
    }
}

/// The one access key of `[s3]`.
pub(crate) struct OneKey {
    access_key: String,
    secret_key: SecretKey,
}

impl OneKey {
    pub(crate) fn new(access_key: &str, secret_key: &str) -> Self {
        Self {
            access_key: access_key.to_string(),
            secret_key: SecretKey::from(secret_key),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for OneKey {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.access_key {
            Ok(self.secret_key.clone())
        } else {
            Err(s3_error!(
                InvalidAccessKeyId,
                "The access key you provided does not exist."
            ))
        }
    }
}
