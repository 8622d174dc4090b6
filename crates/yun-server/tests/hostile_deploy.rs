//! The deploy route against hostile packages, as env keys can send them: refused, and
//! nothing of the attempt is left in the data dir or written outside it.

use base64::Engine as _;
use serde_json::json;
use yun_testkit::{Options, TestYun};

/// A `.tar.gz` of (path, symlink target or file body), names written raw.
fn archive(entries: &[(&str, Option<&str>, &str)]) -> String {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, link, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(match link {
            Some(_) => tar::EntryType::Symlink,
            None => tar::EntryType::Regular,
        });
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, body.as_bytes()).unwrap();
    }
    let bytes = b.into_inner().unwrap().finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packages_are_refused_leaving_nothing() {
    let yun = TestYun::start(Options::default()).await;
    let index = ("index.js", None, "exports.main = async () => 1");
    let mut chain = vec![index, ("a", Some("."), "")];
    let mut at = String::from("a");
    let parts: Vec<String> = ["b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|part| {
            at = format!("{at}/{part}");
            at.clone()
        })
        .collect();
    chain.extend(parts.iter().map(|p| (p.as_str(), Some(".."), "")));
    let pwned = format!("{at}/PWNED.txt");
    chain.push((&pwned, None, "x"));
    let cases = [
        ("chain", archive(&chain)),
        (
            "through",
            archive(&[
                index,
                ("out", Some("../../../.."), ""),
                ("out/PWNED.txt", None, "x"),
            ]),
        ),
        (
            "filedep",
            archive(&[
                index,
                (
                    "package.json",
                    None,
                    r#"{"dependencies":{"etc":"file:/etc"}}"#,
                ),
            ]),
        ),
    ];
    for (name, code) in cases {
        let (status, body) = yun
            .management(
                reqwest::Method::PUT,
                &format!("/api/v1/envs/dev/functions/{name}"),
                Some(json!({ "code_base64": code })),
            )
            .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_PARAM", "{name}: {body}");
    }
    let functions = yun.data_dir.path().join("functions/dev");
    let left: Vec<_> = std::fs::read_dir(&functions)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    for dir in functions.ancestors() {
        assert!(!dir.join("PWNED.txt").exists(), "{}", dir.display());
    }
    yun.stop().await;
}
