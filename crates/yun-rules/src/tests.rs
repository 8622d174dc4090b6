use serde_json::{json, Value};

use super::*;

fn alice() -> Auth {
    Auth {
        uid: "alice".into(),
        login_type: "USERNAME".into(),
        anonymous: false,
        custom_user_id: None,
    }
}

fn ctx<'a>(auth: Option<&'a Auth>, doc: Option<&'a Value>) -> Context<'a> {
    Context {
        auth,
        doc,
        now_ms: 1_000_000,
        ..Context::default()
    }
}

fn set(spec: Value) -> RuleSet {
    RuleSet::parse(&spec, Target::Collection).unwrap()
}

#[test]
fn presets_mean_what_the_console_says() {
    let a = alice();
    let mine = json!({"_openid": "alice", "n": 1});
    let theirs = json!({"_openid": "bob", "n": 1});
    let cases = [
        // preset, doc, read, write
        ("READONLY", &mine, true, true),
        ("READONLY", &theirs, true, false),
        ("PRIVATE", &mine, true, true),
        ("PRIVATE", &theirs, false, false),
        ("ADMINWRITE", &mine, true, false),
        ("ADMINONLY", &mine, false, false),
    ];
    for (preset, doc, read, write) in cases {
        let rules = set(json!(preset));
        let c = ctx(Some(&a), Some(doc));
        assert_eq!(rules.read.allows(&c), read, "{preset} read {doc}");
        for rule in [&rules.create, &rules.update, &rules.delete] {
            assert_eq!(rule.allows(&c), write, "{preset} write {doc}");
        }
        assert_eq!(rules.to_json(), json!(preset));
    }
    // Nobody signed in owns nothing, even a document without an owner.
    let unowned = json!({"n": 1});
    assert!(!set(json!("PRIVATE"))
        .read
        .allows(&ctx(None, Some(&unowned))));
}

#[test]
fn custom_rules_read_auth_doc_request_and_now() {
    let a = alice();
    let rules = set(json!({
        "read": "doc.public == true || doc._openid == auth.openid",
        "create": "auth != null && request.data.title != null",
        "update": "doc._openid == auth.uid && now < doc.lockedUntil",
        "delete": false,
    }));
    let public = json!({"public": true, "_openid": "bob"});
    let private = json!({"public": false, "_openid": "bob"});
    assert!(rules.read.allows(&ctx(Some(&a), Some(&public))));
    assert!(!rules.read.allows(&ctx(Some(&a), Some(&private))));
    let data = json!({"title": "hi"});
    let mut c = ctx(Some(&a), None);
    c.request_data = Some(&data);
    assert!(rules.create.allows(&c));
    let untitled = json!({"body": "x"});
    c.request_data = Some(&untitled);
    assert!(!rules.create.allows(&c));
    let locked = json!({"_openid": "alice", "lockedUntil": 2_000_000});
    let expired = json!({"_openid": "alice", "lockedUntil": 10});
    assert!(rules.update.allows(&ctx(Some(&a), Some(&locked))));
    assert!(!rules.update.allows(&ctx(Some(&a), Some(&expired))));
    assert!(!rules.delete.allows(&ctx(Some(&a), Some(&locked))));
    assert_eq!(rules.to_json()["delete"], json!(false));
}

#[test]
fn expression_details() {
    let a = alice();
    let doc = json!({"tags": ["x", "y"], "n": 3, "s": "b", "nested": {"k": [1, {"deep": "v"}]}});
    let yes = [
        "'x' in doc.tags",
        "doc.n in [1, 2, 3]",
        "doc.n === 3.0",
        "doc.nested.k[1].deep == 'v'",
        "doc['s'] > 'a' && doc.s <= \"b\"",
        "!(doc.n < 2)",
        "doc.missing == null",
        "auth.loginType == 'USERNAME' && auth.isAnonymous == false",
        "(doc.n > 1 || false) && true",
    ];
    for src in yes {
        assert!(
            Rule::from_json("r", &json!(src))
                .unwrap()
                .allows(&ctx(Some(&a), Some(&doc))),
            "{src}"
        );
    }
    let no = [
        "doc.n < 'a'",
        "doc.s > 1",
        "'z' in doc.tags",
        "doc.missing.deeper == 1",
        "!doc.n",
    ];
    for src in no {
        assert!(
            !Rule::from_json("r", &json!(src))
                .unwrap()
                .allows(&ctx(Some(&a), Some(&doc))),
            "{src}"
        );
    }
    for bad in [
        "doc.",
        "window.x == 1",
        "doc.n ==",
        "(doc.n",
        "doc.n = 1",
        "request.x == 1",
        "'open",
        "doc.n == 1 1",
    ] {
        assert!(matches!(parse(bad), Err(RuleError::Syntax(_))), "{bad}");
    }
    let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
    assert!(parse(&deep).is_err(), "nesting is bounded");
    for bad in [
        json!("NOPE"),
        json!({"write": true}),
        json!({"read": 1}),
        json!({"read": true, "wirte": true}),
        json!([]),
    ] {
        assert!(RuleSet::parse(&bad, Target::Collection).is_err(), "{bad}");
    }
}

#[test]
fn queries_must_stay_within_the_read_rule() {
    let a = alice();
    let c = ctx(Some(&a), None);
    let owner = set(json!("PRIVATE")).read;
    let public_or_mine = Rule::from_json(
        "read",
        &json!("doc.public == true || doc._openid == auth.openid"),
    )
    .unwrap();
    let ranged =
        Rule::from_json("read", &json!("doc.score >= 10 && doc.kind in ['a', 'b']")).unwrap();
    let cases: &[(&Rule, Value, bool)] = &[
        (&owner, json!({"_openid": "alice"}), true),
        (&owner, json!({"_openid": "alice", "n": {"$gt": 1}}), true),
        (&owner, json!({"_openid": {"$eq": "alice"}}), true),
        (&owner, json!({"_openid": {"$in": ["alice"]}}), true),
        (
            &owner,
            json!({"$and": [{"n": 1}, {"_openid": "alice"}]}),
            true,
        ),
        (&owner, json!({}), false),
        (&owner, json!({"_openid": "bob"}), false),
        (&owner, json!({"_openid": {"$in": ["alice", "bob"]}}), false),
        (&owner, json!({"_openid": {"$ne": "bob"}}), false),
        (
            &owner,
            json!({"$or": [{"_openid": "alice"}, {"n": 1}]}),
            false,
        ),
        (
            &owner,
            json!({"$or": [{"_openid": "alice", "n": 1}, {"_openid": "alice", "n": 2}]}),
            true,
        ),
        (&public_or_mine, json!({"public": true}), true),
        (&public_or_mine, json!({"_openid": "alice"}), true),
        (
            &public_or_mine,
            json!({"$or": [{"public": true}, {"_openid": "alice"}]}),
            true,
        ),
        (&public_or_mine, json!({"public": false}), false),
        (&ranged, json!({"score": {"$gte": 10}, "kind": "a"}), true),
        (
            &ranged,
            json!({"score": {"$gt": 20}, "kind": {"$in": ["a", "b"]}}),
            true,
        ),
        (&ranged, json!({"score": 15, "kind": "b"}), true),
        (&ranged, json!({"score": {"$gte": 9}, "kind": "a"}), false),
        (
            &ranged,
            json!({"score": {"$gt": 10}, "kind": {"$in": ["a", "c"]}}),
            false,
        ),
        (&ranged, json!({"score": {"$lt": 100}, "kind": "a"}), false),
    ];
    for (rule, query, allowed) in cases {
        assert_eq!(within(rule, query, &c), *allowed, "{query}");
    }
    // Signed out, the owner rule can never be proven: auth.openid is null.
    assert!(!within(&owner, &json!({"_openid": null}), &ctx(None, None)));
    assert!(within(&Rule::Const(true), &json!({}), &c));
    assert!(!within(
        &Rule::Const(false),
        &json!({"_openid": "alice"}),
        &c
    ));
    // Rules over things other than the document are decided on the spot.
    let signed_in = Rule::from_json("read", &json!("auth != null")).unwrap();
    assert!(within(&signed_in, &json!({}), &c));
    assert!(!within(&signed_in, &json!({}), &ctx(None, None)));
    // A negated owner check is provable by a different owner, and opaque rules never are.
    let not_mine = Rule::from_json("read", &json!("!(doc._openid == auth.openid)")).unwrap();
    assert!(within(&not_mine, &json!({"_openid": {"$ne": "alice"}}), &c));
    assert!(!within(&not_mine, &json!({"_openid": "alice"}), &c));
    let opaque = Rule::from_json("read", &json!("doc.a == doc.b")).unwrap();
    assert!(!within(&opaque, &json!({"a": 1, "b": 1}), &c));
}

#[test]
fn storage_rules_read_the_file_owner_and_path() {
    let a = alice();
    let rules = RuleSet::parse(
        &json!({"read": "resource.path != 'private/plan.txt'", "write": "resource.openid == auth.openid"}),
        Target::Storage,
    )
    .unwrap();
    let mine = json!({"openid": "alice", "path": "photos/a.png"});
    let theirs = json!({"openid": "bob", "path": "private/plan.txt"});
    let ctx = |resource| Context {
        auth: Some(&a),
        resource: Some(resource),
        ..Context::default()
    };
    assert!(rules.read.allows(&ctx(&mine)));
    assert!(!rules.read.allows(&ctx(&theirs)));
    assert!(rules.update.allows(&ctx(&mine)));
    assert!(!rules.delete.allows(&ctx(&theirs)));
    // READONLY, storage's default, compares the file's owner.
    let default = RuleSet::default_for(Target::Storage);
    assert!(default.read.allows(&ctx(&theirs)));
    assert!(!default.update.allows(&ctx(&theirs)));
}
