//! The end-user seam (`UserStore`) on every backend: names unique per env, a refresh
//! token spent once even when presented on several nodes at once (the others are
//! replays and end its family), one signing key per env however many nodes create it.

use std::sync::Arc;

use yun_conformance::{on_every_backend, Backend};
use yun_types::{EnvId, ErrorCode};
use yun_users::{RefreshRecord, RefreshUse, SigningKey, TicketKeyRecord, UserRecord, UserStore};

on_every_backend!(
    names_are_unique_per_env_even_when_raced,
    a_refresh_token_is_spent_once,
    live_refresh_tokens_are_the_unspent_unexpired_ones_of_the_env,
    one_signing_key_per_env,
    users_page_and_go_with_their_env,
);

fn env(s: &str) -> EnvId {
    EnvId::parse(s).unwrap()
}

fn user(uid: &str, name: Option<&str>, custom: Option<&str>) -> UserRecord {
    UserRecord {
        uid: uid.into(),
        username: name.map(str::to_owned),
        password_hash: name.map(|_| "hash".to_owned()),
        anonymous: name.is_none() && custom.is_none(),
        custom_id: custom.map(str::to_owned),
        disabled: false,
        created_at: 1,
    }
}

async fn names_are_unique_per_env_even_when_raced(backend: Backend) {
    let store = backend.user_store().await;
    let signups = (0..12).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .insert_user(&env("a"), user(&format!("u{i}"), Some("alice"), None))
                .await
        })
    });
    let mut taken = 0;
    for signup in signups {
        match signup.await.unwrap() {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.code, ErrorCode::AlreadyExists);
                taken += 1;
            }
        }
    }
    assert_eq!(taken, 11, "exactly one sign-up gets the name");
    // Another env has names of its own; custom ids are unique too.
    store
        .insert_user(&env("b"), user("u1", Some("alice"), None))
        .await
        .unwrap();
    store
        .insert_user(&env("a"), user("c1", None, Some("ext-1")))
        .await
        .unwrap();
    let clash = store
        .insert_user(&env("a"), user("c2", None, Some("ext-1")))
        .await
        .unwrap_err();
    assert_eq!(clash.code, ErrorCode::AlreadyExists);
    let found = store
        .user_by_custom_id(&env("a"), "ext-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.uid, "c1");
    let in_b = store
        .user_by_name(&env("b"), "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_b.uid, "u1");
}

async fn a_refresh_token_is_spent_once(backend: Backend) {
    let store = backend.user_store().await;
    store
        .insert_user(&env("a"), user("u1", Some("bob"), None))
        .await
        .unwrap();
    let token = |family: &str| RefreshRecord {
        env: "a".into(),
        uid: "u1".into(),
        family: family.into(),
        expires_at: i64::MAX,
    };
    store.insert_refresh("h1", token("fam")).await.unwrap();
    store.insert_refresh("h2", token("fam")).await.unwrap();
    store.insert_refresh("other", token("fam2")).await.unwrap();
    let uses = (0..8).map(|_| {
        let store: Arc<dyn UserStore> = store.clone();
        tokio::spawn(async move { store.use_refresh("h1").await.unwrap() })
    });
    let (mut fresh, mut replayed) = (0, 0);
    for used in uses {
        match used.await.unwrap() {
            RefreshUse::Fresh(t) => {
                assert_eq!((t.uid.as_str(), t.family.as_str()), ("u1", "fam"));
                fresh += 1;
            }
            RefreshUse::Replayed => replayed += 1,
            // The family was already ended by a replay that came first.
            RefreshUse::Unknown => {}
        }
    }
    assert_eq!(fresh, 1, "one use spends it");
    assert!(replayed >= 1, "a second use is a replay");
    // The replay ended the family: its sibling token is gone, other families stay.
    assert!(matches!(
        store.use_refresh("h2").await.unwrap(),
        RefreshUse::Unknown
    ));
    assert!(matches!(
        store.use_refresh("other").await.unwrap(),
        RefreshUse::Fresh(_)
    ));
    // A new password ends every session of the user.
    store.insert_refresh("h3", token("fam3")).await.unwrap();
    store.set_password(&env("a"), "u1", "new").await.unwrap();
    assert!(matches!(
        store.use_refresh("h3").await.unwrap(),
        RefreshUse::Unknown
    ));
    assert_eq!(
        store
            .user(&env("a"), "u1")
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("new")
    );
}

async fn one_signing_key_per_env(backend: Backend) {
    let store = backend.user_store().await;
    let firsts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .active_key(
                    &env("a"),
                    SigningKey {
                        kid: format!("k{i}"),
                        secret: vec![i; 32],
                    },
                )
                .await
                .unwrap()
        })
    });
    let mut kids = Vec::new();
    for first in firsts {
        kids.push(first.await.unwrap().kid);
    }
    kids.dedup();
    assert_eq!(kids.len(), 1, "every node signs with the one key");
    let kid = kids.remove(0);
    assert!(store.key(&env("a"), &kid).await.unwrap().is_some());
    assert!(store.key(&env("b"), &kid).await.unwrap().is_none());
    store
        .rotate_key(
            &env("a"),
            SigningKey {
                kid: "rotated".into(),
                secret: vec![9; 32],
            },
        )
        .await
        .unwrap();
    assert!(
        store.key(&env("a"), &kid).await.unwrap().is_none(),
        "the old key is gone"
    );
    let active = store
        .active_key(
            &env("a"),
            SigningKey {
                kid: "unused".into(),
                secret: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (active.kid.as_str(), active.secret),
        ("rotated", vec![9; 32])
    );
}

async fn users_page_and_go_with_their_env(backend: Backend) {
    let store = backend.user_store().await;
    for i in 0..5 {
        store
            .insert_user(&env("a"), user(&format!("u{i}"), None, None))
            .await
            .unwrap();
    }
    store
        .insert_user(&env("b"), user("u9", None, None))
        .await
        .unwrap();
    let page: Vec<String> = store
        .list_users(&env("a"), "u1", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.uid)
        .collect();
    assert_eq!(page, ["u2", "u3"]);
    assert!(store.set_disabled(&env("a"), "u2", true).await.unwrap());
    assert!(store.user(&env("a"), "u2").await.unwrap().unwrap().disabled);
    assert!(!store.set_disabled(&env("a"), "nobody", true).await.unwrap());
    assert!(store.delete_user(&env("a"), "u3").await.unwrap());
    assert!(!store.delete_user(&env("a"), "u3").await.unwrap());
    let ticket = TicketKeyRecord {
        kid: "t1".into(),
        public_pem: "pem".into(),
        created_at: 1,
    };
    store
        .insert_ticket_key(&env("a"), ticket.clone())
        .await
        .unwrap();
    assert_eq!(
        store.ticket_key(&env("a"), "t1").await.unwrap(),
        Some(ticket)
    );
    assert_eq!(store.list_ticket_keys(&env("a")).await.unwrap().len(), 1);
    store.drop_env(&env("a")).await.unwrap();
    assert!(store
        .list_users(&env("a"), "", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.list_ticket_keys(&env("a")).await.unwrap().is_empty());
    assert_eq!(store.list_users(&env("b"), "", 10).await.unwrap().len(), 1);
}

async fn live_refresh_tokens_are_the_unspent_unexpired_ones_of_the_env(backend: Backend) {
    let store = backend.user_store().await;
    let token = |env: &str, expires_at: i64| RefreshRecord {
        env: env.into(),
        uid: "u1".into(),
        family: format!("fam-{env}-{expires_at}"),
        expires_at,
    };
    store
        .insert_refresh("live", token("a", 2_000))
        .await
        .unwrap();
    store
        .insert_refresh("spent", token("a", 2_000))
        .await
        .unwrap();
    store
        .insert_refresh("expired", token("a", 999))
        .await
        .unwrap();
    store
        .insert_refresh("elsewhere", token("b", 2_000))
        .await
        .unwrap();
    assert!(matches!(
        store.use_refresh("spent").await.unwrap(),
        RefreshUse::Fresh(_)
    ));
    let live = store.live_refresh(&env("a"), 1_000).await.unwrap();
    let seen: Vec<(&str, &str, i64)> = live
        .iter()
        .map(|(hash, t)| (hash.as_str(), t.env.as_str(), t.expires_at))
        .collect();
    assert_eq!(seen, [("live", "a", 2_000)]);
}
