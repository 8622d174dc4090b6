//! `yun user` (the env's end users) and `yun auth` (ticket keys, token signing key).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::{act, print_list};
use crate::output::{self, text};
use crate::Connection;

#[derive(Subcommand)]
pub enum UserCommand {
    /// List the env's end users.
    List,
    /// Show one user.
    Get { uid: String },
    /// Block a user: their sessions end and their tokens stop working at once.
    Disable { uid: String },
    /// Let a disabled user sign in again
    Enable { uid: String },
    /// Delete a user and their sessions (their documents and files stay).
    Delete { uid: String },
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Keys a backend signs custom-login tickets with (node-sdk `createTicket`).
    TicketKey {
        #[command(subcommand)]
        command: TicketKeyCommand,
    },
    /// Replace the key that signs end users' access tokens: every access token stops
    /// working (clients refresh and carry on).
    RotateSigningKey,
}

#[derive(Subcommand)]
pub enum TicketKeyCommand {
    /// Create a key; writes the key file node-sdk reads as `credentials` (shown only now).
    Create {
        /// Write the key file here (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the ticket keys
    List,
    /// Revoke a key: tickets it signed stop working.
    Revoke { private_key_id: String },
}

fn login_type(user: &Value) -> &'static str {
    if user["anonymous"].as_bool() == Some(true) {
        "anonymous"
    } else if user["custom_id"].is_string() {
        "custom"
    } else {
        "username"
    }
}

fn user_row(user: &Value) -> Vec<String> {
    let name = if user["custom_id"].is_string() {
        text(user.get("custom_id"))
    } else {
        text(user.get("username"))
    };
    vec![
        text(user.get("uid")),
        login_type(user).into(),
        name,
        if user["disabled"].as_bool() == Some(true) {
            "disabled".into()
        } else {
            "active".into()
        },
        output::unix_ms_time(&user["created_at"]),
    ]
}

const USER_HEADERS: &[&str] = &["UID", "TYPE", "NAME", "STATE", "CREATED (UTC)"];

pub async fn user(command: UserCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        UserCommand::List => {
            let mut users = Vec::new();
            let mut after = String::new();
            loop {
                let page = client
                    .request(
                        Method::GET,
                        &client.env_path(&format!("/users?limit=1000&after={after}")),
                        None,
                    )
                    .await?;
                users.extend(page["users"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => after = next.to_owned(),
                    None => break,
                }
            }
            let all = json!({ "users": users });
            output::emit(conn.json, &all, |v| {
                output::table(
                    USER_HEADERS,
                    v["users"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(user_row)
                        .collect(),
                )
            });
        }
        UserCommand::Get { uid } => {
            let v = client
                .request(
                    Method::GET,
                    &client.env_path(&format!("/users/{uid}")),
                    None,
                )
                .await?;
            output::emit(conn.json, &v, |v| {
                output::table(USER_HEADERS, vec![user_row(&v["user"])])
            });
        }
        UserCommand::Disable { ref uid } | UserCommand::Enable { ref uid } => {
            let disabled = matches!(command, UserCommand::Disable { .. });
            let done = if disabled { "Disabled" } else { "Enabled" };
            act(
                &client,
                conn.json,
                Method::PATCH,
                &client.env_path(&format!("/users/{uid}")),
                Some(json!({ "disabled": disabled })),
                &format!("{done} {uid}."),
            )
            .await?;
        }
        UserCommand::Delete { uid } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &client.env_path(&format!("/users/{uid}")),
                None,
                &format!("Deleted {uid}."),
            )
            .await?;
        }
    }
    Ok(())
}

pub async fn auth(command: AuthCommand, conn: Connection) -> anyhow::Result<()> {
    let client = Client::connect(&conn)?;
    match command {
        AuthCommand::TicketKey {
            command: TicketKeyCommand::Create { out },
        } => {
            let key = client
                .request(Method::POST, &client.env_path("/auth/ticket-keys"), None)
                .await?;
            match out {
                Some(path) => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    file.write_all(serde_json::to_string_pretty(&key)?.as_bytes())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let summary = json!({ "private_key_id": key["private_key_id"], "file": path });
                    output::emit(conn.json, &summary, |_| {
                        println!(
                            "Created ticket key {}; key file written to {} (keep it secret).",
                            text(key.get("private_key_id")),
                            path.display()
                        )
                    });
                }
                None => println!("{}", serde_json::to_string_pretty(&key)?),
            }
        }
        AuthCommand::TicketKey {
            command: TicketKeyCommand::List,
        } => {
            print_list(
                &client,
                conn.json,
                &client.env_path("/auth/ticket-keys"),
                "keys",
                &["PRIVATE_KEY_ID", "CREATED (UTC)"],
                |k| {
                    vec![
                        text(k.get("privateKeyId")),
                        output::unix_ms_time(&k["createdAt"]),
                    ]
                },
            )
            .await?;
        }
        AuthCommand::TicketKey {
            command: TicketKeyCommand::Revoke { private_key_id },
        } => {
            act(
                &client,
                conn.json,
                Method::DELETE,
                &client.env_path(&format!("/auth/ticket-keys/{private_key_id}")),
                None,
                &format!("Revoked ticket key {private_key_id}."),
            )
            .await?;
        }
        AuthCommand::RotateSigningKey => {
            act(
                &client,
                conn.json,
                Method::POST,
                &client.env_path("/auth/rotate-signing-key"),
                None,
                "Rotated the signing key: every end user's access token must be refreshed.",
            )
            .await?;
        }
    }
    Ok(())
}
