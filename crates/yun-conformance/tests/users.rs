//! End-user accounts (`Users`) over the user-store seam on every backend: sign-up and
//! sign-in, refresh rotation and replay, sign-out, key rotation, custom tickets, expiry,
//! password changes.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use yun_conformance::{on_every_backend, Backend};
use yun_types::{EnvId, ErrorCode};
use yun_users::{TicketKey, Users, ACCESS_SECS};

on_every_backend!(
    sign_up_sign_in_and_bad_credentials,
    refresh_rotates_and_a_replay_revokes_the_session,
    sign_out_rotation_disable_and_tampering,
    custom_tickets_sign_in_the_same_user_until_the_key_is_revoked,
    an_expired_access_token_says_so,
    changing_the_password_ends_other_sessions,
);

async fn users(backend: &Backend) -> Users {
    Users::new(backend.user_store().await)
}

fn env(id: &str) -> EnvId {
    EnvId::parse(id).unwrap()
}

async fn sign_up_sign_in_and_bad_credentials(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let session = users.sign_up(&dev, "alice", "correct horse").await.unwrap();
    let (claims, user) = users.verify(&session.access_token).await.unwrap();
    assert_eq!(
        (claims.scope.as_str(), user.username.as_deref()),
        ("user", Some("alice"))
    );
    let again = users
        .sign_up(&dev, "alice", "another one")
        .await
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::AlreadyExists);
    assert!(users.sign_in(&dev, "alice", "correct horse").await.is_ok());
    for (name, password) in [("alice", "wrong horse"), ("bob", "correct horse")] {
        let e = users.sign_in(&dev, name, password).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCredentials);
    }
    // Users are per env.
    let e = users
        .sign_in(&env("other"), "alice", "correct horse")
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidCredentials);
    assert_eq!(
        users
            .sign_up(&dev, "../x", "correct horse")
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParam
    );
    assert_eq!(
        users
            .sign_up(&dev, "carol", "short")
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParam
    );
}

async fn refresh_rotates_and_a_replay_revokes_the_session(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let first = users.sign_in_anonymously(&dev).await.unwrap();
    let second = users.refresh(&dev, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.user.uid, first.user.uid);
    // Replaying the spent token fails and ends the family: the newest token too.
    assert_eq!(
        users
            .refresh(&dev, &first.refresh_token)
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidCredentials
    );
    assert_eq!(
        users
            .refresh(&dev, &second.refresh_token)
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidCredentials
    );
    // Another env cannot use this env's refresh token.
    let third = users.sign_in_anonymously(&dev).await.unwrap();
    assert!(users
        .refresh(&env("other"), &third.refresh_token)
        .await
        .is_err());
}

async fn sign_out_rotation_disable_and_tampering(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let s = users.sign_up(&dev, "dave", "password one").await.unwrap();
    let (claims, _) = users.verify(&s.access_token).await.unwrap();
    users.end_session(&claims.sid).await.unwrap();
    assert!(
        users.refresh(&dev, &s.refresh_token).await.is_err(),
        "signed out"
    );

    let mut tampered = s.access_token.clone();
    tampered.insert(tampered.len() - 2, 'x');
    assert_eq!(
        users.verify(&tampered).await.unwrap_err().code,
        ErrorCode::Unauthenticated
    );

    let s = users.sign_in(&dev, "dave", "password one").await.unwrap();
    users.rotate_key(&dev).await.unwrap();
    assert_eq!(
        users.verify(&s.access_token).await.unwrap_err().code,
        ErrorCode::Unauthenticated
    );

    let s = users.sign_in(&dev, "dave", "password one").await.unwrap();
    users.set_disabled(&dev, &s.user.uid, true).await.unwrap();
    assert_eq!(
        users.verify(&s.access_token).await.unwrap_err().code,
        ErrorCode::PermissionDenied
    );
    assert!(users.sign_in(&dev, "dave", "password one").await.is_err());
    assert!(users.refresh(&dev, &s.refresh_token).await.is_err());
}

fn ticket(key: &TicketKey, env: &str, uid: &str, exp_ms: i64) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        env: &'a str,
        uid: &'a str,
        iat: i64,
        exp: i64,
    }
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &Claims {
            env,
            uid,
            iat: yun_types::unix_ms(),
            exp: exp_ms,
        },
        &{
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::DecodePrivateKey;
            let private = rsa::RsaPrivateKey::from_pkcs8_pem(&key.private_key).unwrap();
            EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes())
        },
    )
    .unwrap();
    format!("{}/@@/{jwt}", key.private_key_id)
}

async fn custom_tickets_sign_in_the_same_user_until_the_key_is_revoked(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let key = users.create_ticket_key(&dev).await.unwrap();
    let later = yun_types::unix_ms() + 600_000;
    let first = users
        .sign_in_with_ticket(&dev, &ticket(&key, "dev", "user-42", later))
        .await
        .unwrap();
    assert_eq!(first.user.custom_id.as_deref(), Some("user-42"));
    assert!(!first.user.anonymous);
    let again = users
        .sign_in_with_ticket(&dev, &ticket(&key, "dev", "user-42", later))
        .await
        .unwrap();
    assert_eq!(again.user.uid, first.user.uid);
    for bad in [
        ticket(&key, "other", "user-42", later),
        ticket(&key, "dev", "user-42", yun_types::unix_ms() - 1),
        format!(
            "nokey/@@/{}",
            ticket(&key, "dev", "user-42", later)
                .split_once("/@@/")
                .unwrap()
                .1
        ),
        "garbage".into(),
    ] {
        assert_eq!(
            users
                .sign_in_with_ticket(&dev, &bad)
                .await
                .unwrap_err()
                .code,
            ErrorCode::InvalidCredentials,
            "{bad}"
        );
    }
    assert_eq!(
        users
            .sign_in_with_ticket(&dev, &ticket(&key, "dev", "no", later))
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParam
    );
    // Another key's signature under this key id fails.
    let other = users.create_ticket_key(&dev).await.unwrap();
    let forged = format!(
        "{}/@@/{}",
        key.private_key_id,
        ticket(&other, "dev", "user-42", later)
            .split_once("/@@/")
            .unwrap()
            .1
    );
    assert!(users.sign_in_with_ticket(&dev, &forged).await.is_err());
    assert!(users
        .store()
        .delete_ticket_key(&dev, &key.private_key_id)
        .await
        .unwrap());
    assert!(users
        .sign_in_with_ticket(&dev, &ticket(&key, "dev", "user-42", later))
        .await
        .is_err());
}

async fn an_expired_access_token_says_so(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let s = users.sign_in_anonymously(&dev).await.unwrap();
    let (mut claims, _) = users.verify(&s.access_token).await.unwrap();
    claims.iat -= 2 * ACCESS_SECS;
    claims.exp = yun_types::unix_now() - 1;
    // Signed as Yun signs, with the env's key from the store.
    let kid = jsonwebtoken::decode_header(&s.access_token)
        .unwrap()
        .kid
        .unwrap();
    let key = users.store().key(&dev, &kid).await.unwrap().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid);
    let expired =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&key.secret)).unwrap();
    assert_eq!(
        users.verify(&expired).await.unwrap_err().code,
        ErrorCode::AccessTokenExpired
    );
}

async fn changing_the_password_ends_other_sessions(backend: Backend) {
    let users = users(&backend).await;
    let dev = env("dev");
    let s = users.sign_up(&dev, "erin", "first password").await.unwrap();
    assert_eq!(
        users
            .sudo(&dev, &s.user.uid, "wrong one!")
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidCredentials
    );
    let sudo = users
        .sudo(&dev, &s.user.uid, "first password")
        .await
        .unwrap();
    assert!(
        users.verify(&sudo).await.is_err(),
        "a sudo token is no access token"
    );
    let other = users.sign_up(&dev, "frank", "frank's pass").await.unwrap();
    assert!(users
        .set_password(&dev, &other.user.uid, &sudo, "stolen password")
        .await
        .is_err());
    users
        .set_password(&dev, &s.user.uid, &sudo, "second password")
        .await
        .unwrap();
    assert!(users.refresh(&dev, &s.refresh_token).await.is_err());
    assert!(users.sign_in(&dev, "erin", "first password").await.is_err());
    assert!(users.sign_in(&dev, "erin", "second password").await.is_ok());
}
