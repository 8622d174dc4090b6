//! Storage over the file-index seam on every backend: what uploads, copies and deletes
//! append to the change log, and that a refused upload appends nothing.

use bytes::Bytes;
use yun_conformance::{on_every_backend, Backend};
use yun_storage::{CloudPath, FileRecord, ObjectBackend, Storage, StorageLimits};
use yun_types::{EnvId, ErrorCode};

on_every_backend!(uploads_copies_and_deletes_are_logged_and_a_failed_upload_is_not);

async fn uploads_copies_and_deletes_are_logged_and_a_failed_upload_is_not(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(
        &ObjectBackend::Local(dir.path().join("files")),
        backend.file_index().await,
        StorageLimits {
            max_file_bytes: 10,
            env_quota_bytes: 100,
        },
    )
    .unwrap();
    let env = EnvId::parse("dev").unwrap();
    let path = CloudPath::parse("a/b.txt").unwrap();
    let body = |parts: &[&'static [u8]]| {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    };
    let file = storage
        .upload(&env, &path, None, "", body(&[b"hello", b"!"]))
        .await
        .unwrap();
    assert_eq!((file.size, file.content_type.as_str()), (6, "text/plain"));
    let too_big = storage
        .upload(&env, &path, None, "", body(&[b"0123456789", b"x"]))
        .await;
    assert_eq!(too_big.unwrap_err().code, ErrorCode::PayloadTooLarge);
    assert_eq!(storage.stat(&env, &path).await.unwrap().etag, file.etag);
    let copy = CloudPath::parse("c.txt").unwrap();
    storage.copy(&env, &path, &copy, false, true).await.unwrap();
    storage.delete(&env, &copy).await.unwrap();
    let log = storage.change_log().changes_after(0, 100).await.unwrap();
    let seen: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| (e.env.as_str(), e.op.as_str(), e.key.as_str()))
        .collect();
    // The refused upload logged nothing; the move is a copy and a delete.
    assert_eq!(
        seen,
        [
            ("dev", "created", "a/b.txt"),
            ("dev", "created", "c.txt"),
            ("dev", "removed", "a/b.txt"),
            ("dev", "removed", "c.txt"),
        ]
    );
    let created: FileRecord = serde_json::from_str(log[0].after.as_deref().unwrap()).unwrap();
    assert_eq!(
        (created.size, created.etag.as_str()),
        (6, file.etag.as_str())
    );
    assert!(log[0].before.is_none() && log[2].after.is_none());
    let removed: FileRecord = serde_json::from_str(log[3].before.as_deref().unwrap()).unwrap();
    assert_eq!(removed.path, "c.txt");
}
