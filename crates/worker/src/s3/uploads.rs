//! Multipart uploads in progress: which object each is for, its parts so far and when it last
//! stored one. The parts' bytes are the backend's (in the function's space, outside every
//! bucket); this table is memory only, so a worker that restarts forgets its uploads, and
//! their parts are removed once they are as old as the expiry.

use super::names::Location;
use crate::storage::{Space, UploadId};
use parking_lot::Mutex;
use s3s::{s3_error, S3Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// S3's highest part number.
pub(crate) const MAX_PART: i32 = 10_000;

/// A part stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub size: u64,
    pub etag: String,
}

#[derive(Debug)]
struct Upload {
    target: Location,
    parts: BTreeMap<u32, Part>,
    touched: Instant,
    /// A CompleteMultipartUpload is under way: no other may start.
    completing: bool,
}

/// The uploads in progress, bounded in number.
pub(crate) struct Uploads {
    table: Mutex<HashMap<UploadId, Upload>>,
    max: usize,
    expiry: Duration,
    counter: AtomicU64,
}

impl Uploads {
    pub(crate) fn new(max: usize, expiry: Duration) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            max: max.max(1),
            expiry,
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn expiry(&self) -> Duration {
        self.expiry
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<UploadId, Upload>> {
        self.table.lock()
    }

    /// A new upload for `target`.
    pub(crate) fn create(&self, target: Location) -> S3Result<UploadId> {
        let mut table = self.lock();
        if table.len() >= self.max {
            return Err(s3_error!(
                SlowDown,
                "{} multipart uploads are in progress, the most this worker keeps; complete \
                 or abort some",
                self.max
            ));
        }
        let id = self
            .new_id()
            .ok_or_else(|| s3_error!(InternalError, "cannot name a new upload"))?;
        table.insert(
            id.clone(),
            Upload {
                target,
                parts: BTreeMap::new(),
                touched: Instant::now(),
                completing: false,
            },
        );
        Ok(id)
    }

    /// A name no other upload has, from the clock, the process and a counter.
    fn new_id(&self) -> Option<UploadId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        UploadId::parse(&format!("{nanos:024x}{:08x}{n:016x}", std::process::id()))
    }

    /// The upload `id` for `target`, if it exists and is for that object.
    fn find<'t>(
        table: &'t mut HashMap<UploadId, Upload>,
        id: &str,
        target: &Location,
    ) -> S3Result<(UploadId, &'t mut Upload)> {
        let no_such = || s3_error!(NoSuchUpload, "no multipart upload {id:?} is in progress");
        let id = UploadId::parse(id).ok_or_else(no_such)?;
        let upload = table.get_mut(&id).ok_or_else(no_such)?;
        if upload.target != *target {
            return Err(s3_error!(
                NoSuchUpload,
                "multipart upload {:?} is for another key",
                id.as_str()
            ));
        }
        Ok((id, upload))
    }

    /// Checks that part `part` of `size` bytes may be added to upload `id` without taking it
    /// over `max_bytes`, and returns the upload's id.
    pub(crate) fn check_part(
        &self,
        id: &str,
        target: &Location,
        part: u32,
        size: u64,
        max_bytes: u64,
    ) -> S3Result<UploadId> {
        let mut table = self.lock();
        let (id, upload) = Self::find(&mut table, id, target)?;
        if upload.completing {
            return Err(s3_error!(
                NoSuchUpload,
                "multipart upload is being completed"
            ));
        }
        let others: u64 = upload
            .parts
            .iter()
            .filter(|(n, _)| **n != part)
            .map(|(_, p)| p.size)
            .sum();
        if others.saturating_add(size) > max_bytes {
            return Err(s3_error!(
                EntityTooLarge,
                "with this part the object would have {} bytes, over the limit of {max_bytes} \
                 bytes per object",
                others.saturating_add(size)
            ));
        }
        upload.touched = Instant::now();
        Ok(id)
    }

    /// Records a stored part; false if the upload ended meanwhile (its part is then left
    /// over, for the caller to remove).
    pub(crate) fn part_stored(&self, id: &UploadId, part: u32, stored: Part) -> bool {
        let mut table = self.lock();
        match table.get_mut(id) {
            Some(upload) if !upload.completing => {
                upload.parts.insert(part, stored);
                upload.touched = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Starts completing upload `id`: its parts, and no other part or completion may start.
    pub(crate) fn start_completing(
        &self,
        id: &str,
        target: &Location,
    ) -> S3Result<(UploadId, BTreeMap<u32, Part>)> {
        let mut table = self.lock();
        let (id, upload) = Self::find(&mut table, id, target)?;
        if upload.completing {
            return Err(s3_error!(
                NoSuchUpload,
                "multipart upload is being completed already"
            ));
        }
        upload.completing = true;
        Ok((id, upload.parts.clone()))
    }

    /// A completion failed: the upload takes parts again.
    pub(crate) fn completion_failed(&self, id: &UploadId) {
        if let Some(upload) = self.lock().get_mut(id) {
            upload.completing = false;
            upload.touched = Instant::now();
        }
    }

    /// Ends upload `id` (completed or aborted); the space holding its parts.
    pub(crate) fn remove(&self, id: &UploadId) -> Option<Space> {
        self.lock().remove(id).map(|u| u.target.space)
    }

    /// Ends upload `id` for `target` (AbortMultipartUpload).
    pub(crate) fn abort(&self, id: &str, target: &Location) -> S3Result<UploadId> {
        let mut table = self.lock();
        let (id, _) = Self::find(&mut table, id, target)?;
        table.remove(&id);
        Ok(id)
    }

    /// Ends the uploads idle past the expiry; returns them with their spaces.
    pub(crate) fn take_expired(&self) -> Vec<(UploadId, Space)> {
        let mut table = self.lock();
        let expired: Vec<UploadId> = table
            .iter()
            .filter(|(_, u)| !u.completing && u.touched.elapsed() >= self.expiry)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| table.remove(&id).map(|u| (id, u.target.space)))
            .collect()
    }

    /// Whether upload `id` is in progress here.
    pub(crate) fn contains(&self, id: &UploadId) -> bool {
        self.lock().contains_key(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::{Bucket, Key};

    fn at(key: &str) -> Location {
        Location {
            space: Space::parse("fn").unwrap(),
            bucket: Bucket::parse("b").unwrap(),
            key: Key::parse(key).unwrap(),
        }
    }

    fn part(size: u64) -> Part {
        Part {
            size,
            etag: format!("e{size}"),
        }
    }

    #[test]
    fn parts_are_bounded_and_belong_to_their_key() {
        let uploads = Uploads::new(2, Duration::from_secs(3600));
        let id = uploads.create(at("k")).unwrap();
        let raw = id.as_str().to_string();
        assert_eq!(raw.len(), 48);
        assert_ne!(uploads.create(at("k")).unwrap(), id);
        // At its bound, no more uploads.
        assert_eq!(
            uploads.create(at("k")).unwrap_err().code(),
            &s3s::S3ErrorCode::SlowDown
        );
        uploads.check_part(&raw, &at("k"), 1, 60, 100).unwrap();
        assert!(uploads.part_stored(&id, 1, part(60)));
        // Another key, or an unknown id: no such upload.
        let code = |r: S3Result<UploadId>| r.unwrap_err().code().clone();
        assert_eq!(
            code(uploads.check_part(&raw, &at("other"), 2, 1, 100)),
            s3s::S3ErrorCode::NoSuchUpload
        );
        assert_eq!(
            code(uploads.check_part("../../x", &at("k"), 2, 1, 100)),
            s3s::S3ErrorCode::NoSuchUpload
        );
        // The parts together stay within the object limit; replacing a part counts it once.
        assert_eq!(
            code(uploads.check_part(&raw, &at("k"), 2, 41, 100)),
            s3s::S3ErrorCode::EntityTooLarge
        );
        uploads.check_part(&raw, &at("k"), 1, 100, 100).unwrap();
        // While completing, no parts; a failed completion takes parts again.
        let (_, parts) = uploads.start_completing(&raw, &at("k")).unwrap();
        assert_eq!(parts.get(&1), Some(&part(60)));
        assert!(uploads.start_completing(&raw, &at("k")).is_err());
        assert!(!uploads.part_stored(&id, 2, part(1)));
        uploads.completion_failed(&id);
        assert!(uploads.part_stored(&id, 2, part(1)));
        assert_eq!(uploads.remove(&id), Some(Space::parse("fn").unwrap()));
        assert!(!uploads.contains(&id));
    }

    #[test]
    fn idle_uploads_expire() {
        let uploads = Uploads::new(8, Duration::ZERO);
        let id = uploads.create(at("k")).unwrap();
        let expired = uploads.take_expired();
        assert_eq!(expired, [(id.clone(), Space::parse("fn").unwrap())]);
        assert!(uploads.take_expired().is_empty());
        assert!(uploads.abort(id.as_str(), &at("k")).is_err());
    }
}
