//! `yun serve`: a node of a cluster. Its settings are `yun dev`'s, layered: a flag wins
//! over a `YUN_*` variable, which wins over the configuration file (`yun.toml`), which
//! wins over the defaults of a server (listen on every address, data in /var/lib/yun,
//! drain for 10 s on SIGTERM). The layers resolve to a `yun dev` command line, parsed by
//! the same definitions: one set of settings, one set of checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser};

use crate::DevArgs;

#[derive(Args)]
pub struct ServeArgs {
    /// The configuration file (TOML; its keys are the flags' names with `_` for `-`).
    /// Default: ./yun.toml when there is one.
    #[arg(long, env = "YUN_CONFIG")]
    config: Option<PathBuf>,
    /// Print the settings that result, where each comes from, with secrets masked; then exit.
    #[arg(long)]
    print_config: bool,
    /// This node's name in logs and the banner (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The platform key to create when the database is new (every node of a cluster
    /// starts with the same one), instead of a random key shown once.
    #[arg(long)]
    platform_secret_id: Option<String>,
    #[arg(long, hide_env_values = true)]
    platform_secret_key: Option<String>,
    #[command(flatten)]
    node: DevArgs,
}

impl ServeArgs {
    pub fn print_config(&self) -> bool {
        self.print_config
    }
}

/// `yun dev`'s settings as a parser of their own, to read the resolved command line.
#[derive(Parser)]
#[command(name = "yun serve")]
struct NodeLine {
    #[command(flatten)]
    node: DevArgs,
}

/// Settings `yun serve` has besides `yun dev`'s.
const SERVE_ONLY: &[&str] = &["node_name", "platform_secret_id", "platform_secret_key"];
/// Settings never printed in full.
const SECRETS: &[&str] = &["platform_secret_key"];

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Flag,
    Variable,
    File,
    ServerDefault,
    Default,
}

struct Setting {
    value: String,
    layer: Layer,
    /// The variable it came from, for the printout.
    variable: Option<String>,
}

pub struct Resolved {
    pub node: DevArgs,
    pub node_name: String,
    pub platform_key: Option<yun_server::PlatformKey>,
    settings: BTreeMap<String, Setting>,
    file: Option<PathBuf>,
}

/// The variable a setting reads: the one its flag names, or `YUN_` and its name.
fn variable_of(arg: &clap::Arg) -> String {
    arg.get_env()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("YUN_{}", arg.get_id().as_str().to_uppercase()))
}

fn server_default(key: &str) -> Option<&'static str> {
    match key {
        "listen" => Some("0.0.0.0:8787"),
        "data_dir" => Some("/var/lib/yun"),
        "drain" => Some("10s"),
        _ => None,
    }
}

/// A value of the configuration file as the command line would spell it.
fn file_value(key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!(
            "{key} must be a string, a number or true/false, not a {}",
            other.type_str()
        ),
    })
}

fn read_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

pub fn resolve(args: &ServeArgs, matches: &ArgMatches) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from("yun.toml")).filter(|p| p.exists()),
    };
    let mut table = match &file {
        Some(path) => read_file(path)?,
        None => toml::Table::new(),
    };
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let mut settings = BTreeMap::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str().to_owned();
        if key == "config" || key == "print_config" {
            continue;
        }
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let variable = variable_of(arg);
        let from_file = table.remove(&key);
        let setting = match matches.value_source(&key) {
            Some(ValueSource::CommandLine) => Some(Setting {
                value: if is_switch {
                    "true".into()
                } else {
                    raw(matches, &key)
                },
                layer: Layer::Flag,
                variable: None,
            }),
            Some(ValueSource::EnvVariable) => Some(Setting {
                value: raw(matches, &key),
                layer: Layer::Variable,
                variable: Some(variable.clone()),
            }),
            _ => None,
        };
        let setting = setting
            .or_else(|| {
                std::env::var(&variable).ok().map(|value| Setting {
                    value,
                    layer: Layer::Variable,
                    variable: Some(variable.clone()),
                })
            })
            .map(Ok)
            .or_else(|| {
                from_file.as_ref().map(|v| {
                    file_value(&key, v).map(|value| Setting {
                        value,
                        layer: Layer::File,
                        variable: None,
                    })
                })
            })
            .transpose()?
            .or_else(|| {
                server_default(&key).map(|value| Setting {
                    value: value.into(),
                    layer: Layer::ServerDefault,
                    variable: None,
                })
            })
            .or_else(|| {
                arg.get_default_values().first().map(|v| Setting {
                    value: v.to_string_lossy().into_owned(),
                    layer: Layer::Default,
                    variable: None,
                })
            });
        if let Some(setting) = setting {
            settings.insert(key, setting);
        }
    }
    if let Some(unknown) = table.keys().next() {
        bail!(
            "{}: unknown setting {unknown:?} (the settings are `yun serve --help`'s flags, with _ for -)",
            file.as_deref().unwrap_or(Path::new("yun.toml")).display()
        );
    }

    // The resolved settings, read as a `yun dev` command line.
    let switches: Vec<String> = command
        .get_arguments()
        .filter(|a| matches!(a.get_action(), clap::ArgAction::SetTrue))
        .map(|a| a.get_id().as_str().to_owned())
        .collect();
    let mut line = vec!["yun serve".to_owned()];
    for (key, setting) in &settings {
        if SERVE_ONLY.contains(&key.as_str()) {
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        if switches.contains(key) {
            match setting.value.as_str() {
                "true" | "1" => line.push(flag),
                "false" | "0" | "" => {}
                other => bail!(
                    "{key} is true or false, not {other:?} ({})",
                    describe(setting)
                ),
            }
        } else {
            line.push(format!("{flag}={}", setting.value));
        }
    }
    let node = NodeLine::try_parse_from(&line)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?
        .node;
    if node.database.is_none() {
        bail!(
            "yun serve keeps its data in PostgreSQL: give its URL with --database, \
             YUN_DATABASE_URL or `database = \"postgres://…\"` in yun.toml"
        );
    }
    let value = |key: &str| settings.get(key).map(|s| s.value.clone());
    let platform_key = match (value("platform_secret_id"), value("platform_secret_key")) {
        (Some(secret_id), Some(secret_key)) => Some(yun_server::PlatformKey {
            secret_id,
            secret_key,
        }),
        (None, None) => None,
        _ => bail!("give both platform_secret_id and platform_secret_key, or neither"),
    };
    if !node
        .events
        .as_deref()
        .is_some_and(|e| e.starts_with("nats://"))
    {
        bail!(
            "yun serve's nodes share async events, timer ticks and cache invalidations \
             through NATS JetStream: give --events nats://HOST:PORT, YUN_EVENTS or \
             `events = \"nats://…\"` in yun.toml"
        );
    }
    let node_name = value("node_name").unwrap_or_else(host_name);
    Ok(Resolved {
        node,
        node_name,
        platform_key,
        settings,
        file,
    })
}

fn raw(matches: &ArgMatches, key: &str) -> String {
    matches
        .get_raw(key)
        .and_then(|mut v| v.next())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "yun".into())
}

fn describe(setting: &Setting) -> String {
    match (setting.layer, &setting.variable) {
        (Layer::Flag, _) => "flag".into(),
        (Layer::Variable, Some(v)) => v.clone(),
        (Layer::Variable, None) => "variable".into(),
        (Layer::File, _) => "configuration file".into(),
        (Layer::ServerDefault, _) => "default of yun serve".into(),
        (Layer::Default, _) => "default".into(),
    }
}

/// A URL with its credentials replaced by `****`: the password of `user:password@`, a
/// token alone before `@` (NATS), and `password=` settings (the key=value form).
pub fn mask_url(url: &str) -> String {
    let url: String = url
        .split(' ')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    // The last `@` ends the credentials, whatever they hold (a `/` in a password too).
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) if scheme.starts_with("postgres") => format!("{user}:****@{host}"),
            _ if scheme.starts_with("postgres") => format!("{userinfo}@{host}"),
            _ => format!("****@{host}"),
        },
        None => rest.to_owned(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{rest}?{q}"),
        None => format!("{scheme}://{rest}"),
    }
}

impl Resolved {
    /// The settings as a configuration file, each with where it came from.
    pub fn print(&self) -> String {
        let mut out = format!(
            "# yun serve: flag > YUN_* variable > {} > defaults\n",
            self.file
                .as_deref()
                .map_or("yun.toml (none found)".into(), |p| p.display().to_string())
        );
        for (key, setting) in &self.settings {
            // A secret is printed commented out: the printout used as a configuration
            // file must not make `****` a key.
            let (comment, value) = if SECRETS.contains(&key.as_str()) {
                ("# ", "****".to_owned())
            } else {
                ("", mask_url(&setting.value))
            };
            let value = toml::Value::String(value).to_string();
            out.push_str(&format!(
                "{comment}{key} = {value}  # {}\n",
                describe(setting)
            ));
        }
        for variable in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
            if std::env::var_os(variable).is_some() {
                out.push_str(&format!("# {variable} is set (****)\n"));
            }
        }
        out
    }
}
