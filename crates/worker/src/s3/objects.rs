//! The S3 operations Kindling serves, over functions' storage: buckets (a function's space:
//! CreateBucket, ListBuckets, HeadBucket, GetBucketLocation), objects (Put, Get with Range,
//! Head, Delete, DeleteObjects), listings (ListObjectsV2, ListObjects) and multipart uploads
//! (Create, UploadPart, Complete, Abort). Others answer 501 NotImplemented (`s3s`'s default).
//!
//! Every upload is bounded by `max_object_bytes` and reserves its quota before any byte is
//! read, as a function's upload does. ETags are validators made from an object's modification
//! time and size (objects are plain files that functions and host tools write too, with no
//! place for a content hash); uploads are checked against the digests the client sends
//! instead.

use super::body::{self, Digests, ObjectBody};
use super::listing::{self, Encoding, Page};
use super::names::{self, Location};
use super::uploads::{Part, Uploads, MAX_PART};
use super::{errors, S3Config, Store};
use crate::storage::quota::{charge, BLOCK};
use crate::storage::{self, ObjectInfo, Space, StorageError, UploadId};
use s3s::dto::{self, ETag, ETagCondition, Timestamp};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The S3 operations over one [`Store`].
#[derive(Clone)]
pub(crate) struct ObjectApi {
    store: Store,
    uploads: Arc<Uploads>,
    idle: Duration,
}

impl ObjectApi {
    pub(crate) fn new(store: Store, config: &S3Config) -> Self {
        Self {
            store,
            uploads: Arc::new(Uploads::new(
                config.max_uploads,
                Duration::from_secs(config.upload_expiry_secs),
            )),
            idle: Duration::from_secs(config.idle_timeout_secs.max(1)),
        }
    }

    pub(crate) fn upload_expiry(&self) -> Duration {
        self.uploads.expiry()
    }

    /// Runs a backend call on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn storage::StorageBackend) -> Result<T, StorageError> + Send + 'static,
    ) -> S3Result<T> {
        let backend = self.store.backend.clone();
        tokio::task::spawn_blocking(move || call(backend.as_ref()))
            .await
            .map_err(errors::task)?
            .map_err(errors::storage)
    }

    /// Fails with NoSuchBucket unless `space` exists.
    async fn existing(&self, space: &Space) -> S3Result<()> {
        let s = space.clone();
        match self.blocking(move |b| b.space_created(&s)).await? {
            Some(_) => Ok(()),
            None => Err(s3_error!(
                NoSuchBucket,
                "function {:?} has no object storage; create its bucket first",
                space.as_str()
            )),
        }
    }

    /// Gives back what an operation removed from `space`.
    fn freed(&self, space: &Space, bytes: u64) {
        if bytes > 0 {
            self.store.quotas.release(space.as_str(), bytes);
        }
    }

    /// Removes an upload's parts and gives their room back.
    async fn discard(&self, space: Space, id: UploadId) {
        let s = space.clone();
        match self.blocking(move |b| b.discard_upload(&s, &id)).await {
            Ok(freed) => self.freed(&space, freed),
            Err(e) => tracing::warn!(space = space.as_str(), "cannot remove an upload: {e}"),
        }
    }

    /// Aborts uploads idle past their expiry, and removes the parts of uploads this worker
    /// does not know (from before a restart) once they are as old.
    pub(crate) async fn expire_uploads(&self) {
        for (id, space) in self.uploads.take_expired() {
            tracing::info!(
                space = space.as_str(),
                upload = id.as_str(),
                "multipart upload expired"
            );
            self.discard(space, id).await;
        }
        let expiry = self.uploads.expiry();
        let staged = self
            .blocking(move |b| {
                let mut old = Vec::new();
                for space in b.spaces()? {
                    for (id, at) in b.uploads(&space)? {
                        if at.elapsed().is_ok_and(|age| age >= expiry) {
                            old.push((space.clone(), id));
                        }
                    }
                }
                Ok(old)
            })
            .await;
        match staged {
            Ok(old) => {
                for (space, id) in old {
                    if !self.uploads.contains(&id) {
                        self.discard(space, id).await;
                    }
                }
            }
            Err(e) => tracing::warn!("cannot look for expired uploads: {e}"),
        }
    }

    /// Reserves `most` bytes in `space` for an upload of `size` bytes.
    fn reserve(
        &self,
        space: &Space,
        size: u64,
        most: u64,
    ) -> S3Result<storage::quota::Reservation<'_>> {
        let reserve = || {
            storage::reserve(
                &self.store.quotas,
                self.store.backend.as_ref(),
                space,
                size,
                most,
            )
        };
        // Before refusing, quotas may count the space on disk: not on a thread that serves
        // connections, where the runtime allows it.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let reserved = if multi_thread {
            tokio::task::block_in_place(reserve)
        } else {
            reserve()
        };
        reserved.map_err(errors::storage)
    }

    /// Refuses an upload with `e` before its body is read (draining a small one first).
    async fn refuse(
        &self,
        e: s3s::S3Error,
        body: Option<dto::StreamingBlob>,
        content_length: Option<i64>,
        headers: &hyper::HeaderMap,
    ) -> s3s::S3Error {
        let size = content_length.and_then(|n| u64::try_from(n).ok());
        body::discard(body, size, headers, self.idle).await;
        e
    }

    /// The size a request declares for its body, within the object limit.
    fn declared_size(&self, content_length: Option<i64>) -> S3Result<u64> {
        let size = content_length.ok_or_else(|| s3_error!(MissingContentLength))?;
        let size = u64::try_from(size)
            .map_err(|_| s3_error!(InvalidArgument, "Content-Length {size} is negative"))?;
        let limit = self.store.max_object_bytes;
        if size > limit {
            return Err(errors::storage(StorageError::TooLarge { size, limit }));
        }
        Ok(size)
    }
}

/// The digests an upload request sends with its body (PutObject's and UploadPart's inputs
/// name them alike).
macro_rules! digests_sent {
    ($input:expr, $headers:expr, $trailers:expr) => {
        Digests::of(
            dto::Checksum {
                checksum_crc32: $input.checksum_crc32.clone(),
                checksum_crc32c: $input.checksum_crc32c.clone(),
                checksum_crc64nvme: $input.checksum_crc64nvme.clone(),
                checksum_sha1: $input.checksum_sha1.clone(),
                checksum_sha256: $input.checksum_sha256.clone(),
                ..Default::default()
            },
            $input.content_md5.as_deref(),
            $headers,
            $trailers,
        )
    };
}

/// An upload's reply with the checksums computed of its body.
macro_rules! with_checksums {
    ($output:expr, $sums:expr) => {{
        let mut output = $output;
        output.checksum_crc32 = $sums.checksum_crc32;
        output.checksum_crc32c = $sums.checksum_crc32c;
        output.checksum_crc64nvme = $sums.checksum_crc64nvme;
        output.checksum_sha1 = $sums.checksum_sha1;
        output.checksum_sha256 = $sums.checksum_sha256;
        output
    }};
}

/// An object's entity tag: its modification time and size, in hex.
fn etag(info: &ObjectInfo) -> String {
    let nanos = info
        .modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", info.size)
}

/// A modification time as HTTP dates carry it (whole seconds).
fn http_time(t: SystemTime) -> Timestamp {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs))
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// The conditions of a read (RFC 9110 13.2.2): `If-Match` and `If-Unmodified-Since` fail
/// with 412, `If-None-Match` and `If-Modified-Since` with 304.
fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let tag = etag(info);
    let modified = http_time(info.modified);
    match (if_match, if_unmodified_since) {
        (Some(c), _) if !matches(c, &tag) => return Err(s3_error!(PreconditionFailed)),
        (None, Some(since)) if modified > *since => return Err(s3_error!(PreconditionFailed)),
        _ => {}
    }
    match (if_none_match, if_modified_since) {
        (Some(c), _) if matches(c, &tag) => Err(s3_error!(NotModified)),
        (None, Some(since)) if modified <= *since => Err(s3_error!(NotModified)),
        _ => Ok(()),
    }
}

/// The part number of a request, within S3's range.
fn part_number(n: i32) -> S3Result<u32> {
    match u32::try_from(n) {
        Ok(p) if (1..=MAX_PART as u32).contains(&p) => Ok(p),
        _ => Err(s3_error!(
            InvalidArgument,
            "part number {n} is not between 1 and {MAX_PART}"
        )),
    }
}

/// What a part may add at most: its bytes, the uploads' directory and the upload's.
fn part_charge(size: u64) -> u64 {
    charge(size).saturating_add(2 * BLOCK)
}

/// What a listing asks (ListObjectsV2's and ListObjects' inputs name it alike).
struct ListRequest<'a> {
    bucket: &'a str,
    prefix: Option<&'a str>,
    delimiter: Option<&'a str>,
    /// The key to list after.
    after: Option<String>,
    max_keys: Option<i32>,
    encoding: Option<&'a dto::EncodingType>,
}

/// The [`ListRequest`] of a listing input, resuming after `after`.
macro_rules! listing_of {
    ($input:expr, $after:expr) => {
        ListRequest {
            bucket: &$input.bucket,
            prefix: $input.prefix.as_deref(),
            delimiter: $input.delimiter.as_deref(),
            after: $after,
            max_keys: $input.max_keys,
            encoding: $input.encoding_type.as_ref(),
        }
    };
}

/// A page of a listing as both versions' replies carry it, names encoded as asked.
struct Listed {
    page: Page,
    contents: Vec<dto::Object>,
    common_prefixes: Vec<dto::CommonPrefix>,
    prefix: String,
    delimiter: Option<String>,
    max: i32,
    encoding: Encoding,
}

/// A listing reply of type `$reply` for S3 bucket `$bucket`: what both versions carry from
/// `$listed`, and the fields given.
macro_rules! listing_reply {
    ($reply:path, $bucket:expr, $listed:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let listed: Listed = $listed;
        $reply {
            name: Some($bucket),
            prefix: Some(listed.prefix),
            delimiter: listed.delimiter,
            max_keys: Some(listed.max),
            is_truncated: Some(listed.page.truncated),
            contents: Some(listed.contents),
            common_prefixes: Some(listed.common_prefixes),
            encoding_type: listed.encoding.dto(),
            $($field: $value,)*
            ..Default::default()
        }
    }};
}

#[async_trait::async_trait]
impl S3 for ObjectApi {
    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        let space = names::space(&req.input.bucket)?;
        let s = space.clone();
        if !self.blocking(move |b| b.create_space(&s)).await? {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "function {:?} has object storage already",
                space.as_str()
            ));
        }
        Ok(S3Response::new(dto::CreateBucketOutput {
            location: Some(format!("/{}", space.as_str())),
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        let spaces = self
            .blocking(|b| {
                let mut found = Vec::new();
                for space in b.spaces()? {
                    if let Some(created) = b.space_created(&space)? {
                        found.push((space, created));
                    }
                }
                Ok(found)
            })
            .await?;
        let mut buckets: Vec<dto::Bucket> = spaces
            .into_iter()
            .map(|(space, created)| dto::Bucket {
                name: Some(space.as_str().to_string()),
                creation_date: Some(Timestamp::from(created)),
                bucket_region: None,
            })
            .collect();
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(dto::Owner {
                display_name: Some("kindling".into()),
                id: Some("kindling".into()),
            }),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        self.existing(&names::space(&req.input.bucket)?).await?;
        Ok(S3Response::new(dto::HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        self.existing(&names::space(&req.input.bucket)?).await?;
        Ok(S3Response::new(dto::GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let checked = async {
            let at = names::object(&input.bucket, &input.key)?;
            if input.if_match.is_some() || input.if_none_match.is_some() {
                return Err(s3_error!(
                    NotImplemented,
                    "conditional writes are not supported"
                ));
            }
            let size = self.declared_size(input.content_length)?;
            self.existing(&at.space).await?;
            let digests = digests_sent!(input, &headers, trailing_headers)?;
            let reservation =
                self.reserve(&at.space, size, storage::upload_charge(&at.key, size))?;
            Ok((at, size, digests, reservation))
        };
        let (at, size, digests, reservation) = match checked.await {
            Ok(c) => c,
            Err(e) => {
                return Err(self
                    .refuse(e, input.body, input.content_length, &headers)
                    .await)
            }
        };
        let backend = self.store.backend.clone();
        let target = at.clone();
        let (stored, sums) = body::store(input.body, size, digests, self.idle, move |data| {
            let Location { space, bucket, key } = &target;
            let stored = backend.put(space, bucket, key, size, data)?;
            let info = backend.stat(space, bucket, key)?;
            Ok((stored, info))
        })
        .await?;
        let (stored, info) = stored;
        reservation.commit(stored.added, stored.released);
        let output = dto::PutObjectOutput {
            e_tag: Some(ETag::Strong(etag(&info))),
            size: i64::try_from(info.size).ok(),
            ..Default::default()
        };
        Ok(S3Response::new(with_checksums!(output, sums)))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let input = req.input;
        let at = names::object(&input.bucket, &input.key)?;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "reading by part number is not supported"
            ));
        }
        self.existing(&at.space).await?;
        // The range depends on the size: read what was measured, or measure again if the
        // object was replaced in between.
        let mut attempts = 0;
        let (info, data, range) = loop {
            let target = at.clone();
            let info = self
                .blocking(move |b| b.stat(&target.space, &target.bucket, &target.key))
                .await?;
            check_conditions(
                &info,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            let range = match &input.range {
                None => 0..info.size,
                Some(r) => r
                    .check(info.size)
                    .map_err(|_| s3_error!(InvalidRange, "the range is beyond the object"))?,
            };
            let target = at.clone();
            let start = range.start;
            let (now, data) = self
                .blocking(move |b| b.open_at(&target.space, &target.bucket, &target.key, start))
                .await?;
            attempts += 1;
            if now == info || attempts == 3 {
                break (now, data, range);
            }
        };
        let len = range.end.saturating_sub(range.start);
        let content_range = input.range.map(|_| {
            format!(
                "bytes {}-{}/{}",
                range.start,
                range.end.saturating_sub(1),
                info.size
            )
        });
        Ok(S3Response::new(dto::GetObjectOutput {
            body: Some(ObjectBody::blob(
                Box::new(std::io::Read::take(data, len)),
                len,
            )),
            content_length: i64::try_from(len).ok(),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(etag(&info))),
            last_modified: Some(Timestamp::from(info.modified)),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let input = req.input;
        let at = names::object(&input.bucket, &input.key)?;
        self.existing(&at.space).await?;
        let target = at.clone();
        let info = self
            .blocking(move |b| b.stat(&target.space, &target.bucket, &target.key))
            .await?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        Ok(S3Response::new(dto::HeadObjectOutput {
            content_length: i64::try_from(info.size).ok(),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(ETag::Strong(etag(&info))),
            last_modified: Some(Timestamp::from(info.modified)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let at = names::object(&req.input.bucket, &req.input.key)?;
        self.existing(&at.space).await?;
        let target = at.clone();
        let freed = self
            .blocking(move |b| b.delete(&target.space, &target.bucket, &target.key))
            .await?;
        self.freed(&at.space, freed);
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        let input = req.input;
        let space = names::space(&input.bucket)?;
        self.existing(&space).await?;
        if input.delete.objects.len() > listing::MAX_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "at most {} keys may be deleted at once",
                listing::MAX_KEYS
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut failed = Vec::new();
        for object in input.delete.objects {
            let done = match names::object(&input.bucket, &object.key) {
                Ok(at) => self
                    .blocking(move |b| b.delete(&at.space, &at.bucket, &at.key))
                    .await
                    .map(|freed| self.freed(&space, freed)),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(dto::DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(e) => failed.push(dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(failed),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let input = req.input;
        let after = match &input.continuation_token {
            Some(token) => Some(
                listing::resume_after(token)
                    .ok_or_else(|| s3_error!(InvalidArgument, "invalid continuation token"))?,
            ),
            None => input.start_after.clone(),
        };
        let listed = self.list(listing_of!(input, after)).await?;
        let next = (listed.page.truncated)
            .then(|| listed.page.last.as_deref().map(listing::token))
            .flatten();
        let start_after = input
            .start_after
            .as_deref()
            .map(|s| listed.encoding.apply(s));
        let count = listed.page.keys.len() + listed.page.common_prefixes.len();
        Ok(S3Response::new(listing_reply!(
            dto::ListObjectsV2Output,
            input.bucket,
            listed,
            {
                start_after: start_after,
                key_count: i32::try_from(count).ok(),
                continuation_token: input.continuation_token,
                next_continuation_token: next,
            }
        )))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let input = req.input;
        let listed = self.list(listing_of!(input, input.marker.clone())).await?;
        let encoding = listed.encoding;
        let next_marker = (listed.page.truncated)
            .then(|| listed.page.last.as_deref().map(|k| encoding.apply(k)))
            .flatten();
        let marker = encoding.apply(input.marker.as_deref().unwrap_or(""));
        Ok(S3Response::new(listing_reply!(
            dto::ListObjectsOutput,
            input.bucket,
            listed,
            { marker: Some(marker), next_marker: next_marker }
        )))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let input = req.input;
        let at = names::object(&input.bucket, &input.key)?;
        self.existing(&at.space).await?;
        let id = self.uploads.create(at)?;
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id.as_str().to_string()),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let checked = async {
            let at = names::object(&input.bucket, &input.key)?;
            let part = part_number(input.part_number)?;
            let size = self.declared_size(input.content_length)?;
            let id = self.uploads.check_part(
                &input.upload_id,
                &at,
                part,
                size,
                self.store.max_object_bytes,
            )?;
            let digests = digests_sent!(input, &headers, trailing_headers)?;
            let reservation = self.reserve(&at.space, size, part_charge(size))?;
            Ok((at, part, size, id, digests, reservation))
        };
        let (at, part, size, id, digests, reservation) = match checked.await {
            Ok(c) => c,
            Err(e) => {
                return Err(self
                    .refuse(e, input.body, input.content_length, &headers)
                    .await)
            }
        };
        let backend = self.store.backend.clone();
        let (space, upload) = (at.space.clone(), id.clone());
        let ((info, stored), sums) =
            body::store(input.body, size, digests, self.idle, move |data| {
                backend.put_part(&space, &upload, part, size, data)
            })
            .await?;
        reservation.commit(stored.added, stored.released);
        let tag = etag(&info);
        let recorded = self.uploads.part_stored(
            &id,
            part,
            Part {
                size,
                etag: tag.clone(),
            },
        );
        if !recorded {
            // Aborted or completed while this part was on its way.
            self.discard(at.space, id).await;
            return Err(s3_error!(
                NoSuchUpload,
                "the multipart upload ended meanwhile"
            ));
        }
        let output = dto::UploadPartOutput {
            e_tag: Some(ETag::Strong(tag)),
            ..Default::default()
        };
        Ok(S3Response::new(with_checksums!(output, sums)))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let input = req.input;
        let at = names::object(&input.bucket, &input.key)?;
        let (id, parts) = self.uploads.start_completing(&input.upload_id, &at)?;
        let completed = self
            .complete(&at, &id, &parts, input.multipart_upload)
            .await;
        let info = match completed {
            Ok(info) => info,
            Err(e) => {
                self.uploads.completion_failed(&id);
                return Err(e);
            }
        };
        self.uploads.remove(&id);
        self.discard(at.space.clone(), id).await;
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            e_tag: Some(ETag::Strong(etag(&info))),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let input = req.input;
        let at = names::object(&input.bucket, &input.key)?;
        let id = self.uploads.abort(&input.upload_id, &at)?;
        self.discard(at.space, id).await;
        Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
    }
}

impl ObjectApi {
    /// One page of a listing, its objects and names as S3 lists them.
    async fn list(&self, request: ListRequest<'_>) -> S3Result<Listed> {
        let ListRequest {
            bucket,
            prefix,
            delimiter,
            after,
            max_keys,
            encoding,
        } = request;
        let encoding = Encoding::of(encoding);
        let space = names::space(bucket)?;
        self.existing(&space).await?;
        let max = match max_keys {
            None => listing::MAX_KEYS,
            Some(n) => usize::try_from(n)
                .map_err(|_| s3_error!(InvalidArgument, "max-keys {n} is negative"))?
                .min(listing::MAX_KEYS),
        };
        let (prefix, delimiter) = (
            prefix.unwrap_or("").to_string(),
            delimiter.map(str::to_string),
        );
        let (shown_prefix, shown_delimiter) = (
            encoding.apply(&prefix),
            delimiter.as_deref().map(|d| encoding.apply(d)),
        );
        let s = space.clone();
        let (page, infos) = self
            .blocking(move |b| {
                let keys = listing::keys_under(b, &s, &prefix)?;
                let page =
                    listing::page(&keys, &prefix, delimiter.as_deref(), after.as_deref(), max);
                let mut infos = Vec::with_capacity(page.keys.len());
                for key in &page.keys {
                    // Removed since it was listed: leave it out.
                    let Ok(at) = names::object(s.as_str(), key) else {
                        continue;
                    };
                    match b.stat(&at.space, &at.bucket, &at.key) {
                        Ok(info) => infos.push((key.clone(), info)),
                        Err(StorageError::NoSuchBucket(_) | StorageError::NoSuchObject { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((page, infos))
            })
            .await?;
        let contents = infos
            .into_iter()
            .map(|(key, info)| dto::Object {
                key: Some(encoding.apply(&key)),
                size: i64::try_from(info.size).ok(),
                last_modified: Some(Timestamp::from(info.modified)),
                e_tag: Some(ETag::Strong(etag(&info))),
                storage_class: Some(dto::ObjectStorageClass::from_static(
                    dto::ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        let common_prefixes = page
            .common_prefixes
            .iter()
            .map(|p| dto::CommonPrefix {
                prefix: Some(encoding.apply(p)),
            })
            .collect();
        Ok(Listed {
            page,
            contents,
            common_prefixes,
            prefix: shown_prefix,
            delimiter: shown_delimiter,
            max: i32::try_from(max).unwrap_or(i32::MAX),
            encoding,
        })
    }

    /// Checks the parts a CompleteMultipartUpload names against those stored, and joins them
    /// into the object; returns the object's info.
    async fn complete(
        &self,
        at: &Location,
        id: &UploadId,
        stored: &std::collections::BTreeMap<u32, Part>,
        request: Option<dto::CompletedMultipartUpload>,
    ) -> S3Result<ObjectInfo> {
        let named = request.and_then(|m| m.parts).unwrap_or_default();
        if named.is_empty() {
            return Err(s3_error!(MalformedXML, "the request names no parts"));
        }
        let mut numbers = Vec::with_capacity(named.len());
        let mut total = 0u64;
        for p in &named {
            let n = part_number(p.part_number.unwrap_or(0))?;
            if numbers.last().is_some_and(|last| *last >= n) {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "parts must be listed in ascending order"
                ));
            }
            let part = stored
                .get(&n)
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            if p.e_tag.as_ref().is_some_and(|e| e.value() != part.etag) {
                return Err(s3_error!(InvalidPart, "part {n} has another ETag"));
            }
            numbers.push(n);
            total = total.saturating_add(part.size);
        }
        let limit = self.store.max_object_bytes;
        if total > limit {
            return Err(errors::storage(StorageError::TooLarge {
                size: total,
                limit,
            }));
        }
        // The parts stay on disk until the object is stored: it must fit beside them.
        let reservation = self.reserve(&at.space, total, storage::upload_charge(&at.key, total))?;
        let (target, upload) = (at.clone(), id.clone());
        let (stored, info) = self
            .blocking(move |b| {
                let Location { space, bucket, key } = &target;
                let stored = b.complete_upload(space, &upload, &numbers, bucket, key)?;
                Ok((stored, b.stat(space, bucket, key)?))
            })
            .await?;
        reservation.commit(stored.added, stored.released);
        Ok(info)
    }
}
