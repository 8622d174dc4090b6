//! The file index seam on every backend: a path points at one object; a put answers the
//! record it replaced and a delete the one it removed (the storage layer deletes those
//! objects, so under concurrent uploads each object must be answered exactly once);
//! listings by prefix in byte order; used bytes; dropping an env; the change log.

use std::collections::HashSet;

use yun_conformance::{on_every_backend, Backend};
use yun_storage::index::record_from_log;
use yun_storage::FileRecord;
use yun_types::EnvId;

on_every_backend!(
    puts_replace_deletes_remove_and_listings_page_in_byte_order,
    concurrent_uploads_to_one_path_replace_each_object_exactly_once,
);

fn file(path: &str, object: &str, size: u64) -> FileRecord {
    FileRecord {
        path: path.into(),
        object: object.into(),
        size,
        content_type: "text/plain".into(),
        etag: format!("\"{object}\""),
        owner: "u1".into(),
        created_at: 1_700_000_000_000,
    }
}

async fn puts_replace_deletes_remove_and_listings_page_in_byte_order(backend: Backend) {
    let index = backend.file_index().await;
    let (env, other) = (EnvId::parse("dev").unwrap(), EnvId::parse("other").unwrap());
    assert_eq!(
        index.put(&env, file("a/1.txt", "o1", 10)).await.unwrap(),
        None
    );
    assert_eq!(
        index.put(&env, file("a/1.txt", "o2", 20)).await.unwrap(),
        Some(file("a/1.txt", "o1", 10)),
        "a put answers the record it replaced"
    );
    for (path, object) in [
        ("a/2.txt", "o3"),
        ("a/é.txt", "o4"),
        ("a/Z.txt", "o5"),
        ("b/1.txt", "o6"),
    ] {
        index.put(&env, file(path, object, 1)).await.unwrap();
    }
    index.put(&other, file("a/1.txt", "x1", 100)).await.unwrap();
    assert_eq!(
        index.get(&env, "a/1.txt").await.unwrap(),
        Some(file("a/1.txt", "o2", 20))
    );
    assert_eq!(index.get(&env, "missing").await.unwrap(), None);

    // Byte order: "1" < "2" < "Z" (0x5A) < "é" (0xC3 0xA9).
    let paths = |records: Vec<FileRecord>| records.into_iter().map(|r| r.path).collect::<Vec<_>>();
    assert_eq!(
        paths(index.list(&env, "a/", "", 10).await.unwrap()),
        ["a/1.txt", "a/2.txt", "a/Z.txt", "a/é.txt"]
    );
    assert_eq!(
        paths(index.list(&env, "a/", "a/2.txt", 1).await.unwrap()),
        ["a/Z.txt"]
    );
    assert_eq!(paths(index.list(&env, "", "", 10).await.unwrap()).len(), 5);
    assert_eq!(index.used_bytes(&env).await.unwrap(), 20 + 4);
    assert_eq!(index.used_bytes(&other).await.unwrap(), 100);

    assert_eq!(
        index.delete(&env, "a/2.txt").await.unwrap(),
        Some(file("a/2.txt", "o3", 1))
    );
    assert_eq!(index.delete(&env, "a/2.txt").await.unwrap(), None);

    // The change log: every put and delete, with the records (objects included).
    let log = index.change_log().changes_after(0, 100).await.unwrap();
    let seen: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| (e.env.as_str(), e.op.as_str(), e.key.as_str()))
        .collect();
    assert_eq!(seen.len(), 8);
    assert_eq!(seen[0], ("dev", "created", "a/1.txt"));
    assert_eq!(seen[7], ("dev", "removed", "a/2.txt"));
    let replaced = &log[1];
    assert_eq!(
        record_from_log(replaced.before.as_deref().unwrap())
            .unwrap()
            .object,
        "o1"
    );
    assert_eq!(
        record_from_log(replaced.after.as_deref().unwrap())
            .unwrap()
            .object,
        "o2"
    );
    assert!(log[7].after.is_none());
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));

    let mut dropped = index.drop_env(&env).await.unwrap();
    dropped.sort();
    assert_eq!(dropped, ["o2", "o4", "o5", "o6"]);
    assert!(index.list(&env, "", "", 10).await.unwrap().is_empty());
    assert_eq!(
        index.get(&other, "a/1.txt").await.unwrap().unwrap().object,
        "x1"
    );
}

async fn concurrent_uploads_to_one_path_replace_each_object_exactly_once(backend: Backend) {
    let index = backend.file_index().await;
    let env = EnvId::parse("dev").unwrap();
    let writers = 8;
    let rounds = 10;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (index, env) = (index.clone(), env.clone());
            tokio::spawn(async move {
                let mut replaced = Vec::new();
                for i in 0..rounds {
                    let old = index
                        .put(&env, file("same.txt", &format!("{w}-{i}"), 1))
                        .await
                        .unwrap();
                    replaced.extend(old.map(|r| r.object));
                }
                replaced
            })
        })
        .collect();
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    answered.push(index.get(&env, "same.txt").await.unwrap().unwrap().object);
    let distinct: HashSet<&String> = answered.iter().collect();
    assert_eq!(
        answered.len(),
        writers * rounds,
        "every object is replaced once, or is the last"
    );
    assert_eq!(
        distinct.len(),
        writers * rounds,
        "no object is answered twice"
    );
    assert_eq!(index.used_bytes(&env).await.unwrap(), 1);
}
