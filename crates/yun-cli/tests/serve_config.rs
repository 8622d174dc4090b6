//! `yun serve`'s layered settings: a flag over a YUN_* variable over yun.toml over the
//! defaults, secrets masked in `--print-config`, and clear errors for what is wrong.

use std::path::Path;
use std::process::{Command, Output};

fn serve(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_yun"));
    command.arg("serve").args(args).current_dir(dir);
    // Only what the test sets: none of the caller's YUN_* variables.
    for (key, _) in std::env::vars() {
        if key.starts_with("YUN_") || key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().copied());
    command.output().expect("yun runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
}

#[test]
fn a_flag_wins_over_a_variable_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("yun.toml"),
        r#"
database = "postgres://yun:hunter2@db.internal:5432/yun"
stem_cells = 7
idle_timeout = "2m"
events = "nats://127.0.0.1:4222"
no_metrics = true
platform_secret_id = "AKIDcluster"
platform_secret_key = "very-secret"
"#,
    )
    .unwrap();
    let output = serve(
        dir.path(),
        &["--print-config", "--idle-timeout", "30s"],
        &[("YUN_STEM_CELLS", "3"), ("YUN_IDLE_TIMEOUT", "1m")],
    );
    let (out, err) = text(&output);
    assert!(output.status.success(), "{err}");
    assert_eq!(
        line(&out, "stem_cells"),
        r#"stem_cells = "3"  # YUN_STEM_CELLS"#
    );
    assert_eq!(
        line(&out, "idle_timeout"),
        r#"idle_timeout = "30s"  # flag"#
    );
    assert_eq!(
        line(&out, "events"),
        r#"events = "nats://127.0.0.1:4222"  # configuration file"#
    );
    assert_eq!(
        line(&out, "no_metrics"),
        r#"no_metrics = "true"  # configuration file"#
    );
    assert_eq!(
        line(&out, "listen"),
        r#"listen = "0.0.0.0:8787"  # default of yun serve"#
    );
    assert_eq!(
        line(&out, "queue_timeout"),
        r#"queue_timeout = "3s"  # default"#
    );
    // Secrets never print.
    assert_eq!(
        line(&out, "database"),
        r#"database = "postgres://yun:****@db.internal:5432/yun"  # configuration file"#
    );
    assert!(
        out.contains("\n# platform_secret_key = \"****\"  # configuration file\n"),
        "a secret is printed commented out:\n{out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("very-secret"),
        "{out}"
    );
    // Other credentials in URLs: a NATS token, a password with a `/`, a `password=`.
    let masked = serve(
        dir.path(),
        &[
            "--print-config",
            "--events",
            "nats://s3cr3t-token@nats:4222",
            "--database",
            "postgres://yun:pa/ss@db/yun?sslmode=disable&password=other",
        ],
        &[],
    );
    let (masked_out, masked_err) = text(&masked);
    assert!(masked.status.success(), "{masked_err}");
    assert_eq!(
        line(&masked_out, "events"),
        r#"events = "nats://****@nats:4222"  # flag"#
    );
    assert_eq!(
        line(&masked_out, "database"),
        r#"database = "postgres://yun:****@db/yun?sslmode=disable&password=****"  # flag"#
    );
    // The printout is itself a configuration file.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    let again = serve(
        dir.path(),
        &["--print-config", "--config", printed.to_str().unwrap()],
        &[("YUN_PLATFORM_SECRET_KEY", "very-secret")],
    );
    let (again_out, again_err) = text(&again);
    assert!(again.status.success(), "{again_err}");
    assert_eq!(
        line(&again_out, "stem_cells"),
        r#"stem_cells = "3"  # configuration file"#
    );
}

/// Variables a case sets.
type Vars<'a> = &'a [(&'a str, &'a str)];

#[test]
fn what_is_wrong_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, Vars, &str)] = &[
        ("", &[], "PostgreSQL"),
        (
            "database = \"postgres://127.0.0.1/x\"",
            &[],
            "NATS JetStream",
        ),
        (
            "database = \"postgres://127.0.0.1/x\"\nlisten = \"nowhere\"",
            &[],
            "--listen",
        ),
        (
            "database = \"postgres://127.0.0.1/x\"\nstem_cels = 2",
            &[],
            "unknown setting \"stem_cels\"",
        ),
        (
            "database = \"postgres://127.0.0.1/x\"\n",
            &[("YUN_NO_TRACES", "maybe")],
            "YUN_NO_TRACES",
        ),
        (
            "database = \"postgres://127.0.0.1/x\"\nplatform_secret_id = \"AKID\"",
            &[],
            "platform_secret_key",
        ),
        (
            "database = \"postgres://127.0.0.1/x\"\nevents = \"nats://127.0.0.1\"\npublic_url = \"yun.example.com\"",
            &[],
            "http:// or https://",
        ),
        ("database = [1]", &[], "database must be"),
        ("database = ", &[], "not valid TOML"),
    ];
    for (file, vars, expected) in cases {
        std::fs::write(dir.path().join("yun.toml"), file).unwrap();
        let output = serve(dir.path(), &["--print-config"], vars);
        let (_, err) = text(&output);
        assert!(!output.status.success(), "{file:?} was accepted");
        assert!(err.contains(expected), "{file:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
