//! Human output: aligned tables and the `yun dev` banner. `--json` bypasses all of it.

use serde_json::Value;
use unicode_width::UnicodeWidthStr;

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            // Display columns, not chars: CJK file names take two each.
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.width()))))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for row in rows {
        line(row);
    }
}

/// A Unix-milliseconds value as `YYYY-MM-DD hh:mm:ss` (UTC), `-` when absent.
pub fn unix_ms_time(ms: &Value) -> String {
    unix_time(&ms.as_i64().map_or(Value::Null, |ms| Value::from(ms / 1000)))
}

/// A Unix-seconds value as `YYYY-MM-DD hh:mm:ss` (UTC), `-` when absent.
pub fn unix_time(secs: &Value) -> String {
    secs.as_i64()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// Prints `value` as JSON for scripts, or through `human` for people.
pub fn emit(json: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

pub fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `key_given`: the platform key came from the configuration (never printed then).
pub fn dev_banner(server: &yun_server::Server, node_name: Option<&str>, key_given: bool) {
    let c = &server.credentials;
    println!("Yun is running\n");
    if let Some(name) = node_name {
        println!("  Node        {name}");
    }
    println!("  URL         {}", c.url);
    println!("  Env         {}", c.env_id);
    println!("  SecretId    {}", c.secret_id);
    // The SecretKey is shown once, when it is created: start-up output ends up in logs.
    if key_given {
        println!("  SecretKey   (the one in the configuration)");
    } else if server.first_start {
        println!("  SecretKey   {}", c.secret_key);
    } else {
        println!("  SecretKey   (hidden; `yun key show --reveal` prints it)");
    }
    println!(
        "  Data        {} (credentials in credentials.json)",
        server.data_dir.display()
    );
    println!("  Isolation   {}", server.isolation);
    println!("  Stores      {}", server.database);
    println!("  Files       {}", server.storage);
    if server.first_start {
        println!(
            "\nFirst start: created env {} and a platform key.",
            c.env_id
        );
    }
    println!(
        "\nPoint the SDKs at {}/admin (serviceUrl). Press Ctrl-C to stop.",
        c.url
    );
}
